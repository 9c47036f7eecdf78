//! `shiftnn inspect`: what a `.shift` model holds and how it runs.

use super::common::{self, dims_x, fmt_bytes, fmt_int, Table};
use super::kernels::kernel_name;
use anyhow::Result;
use serde_json::json;
use shiftnn_runtime::{DType, Mode, Model, Op, WeightKind};
use std::path::PathBuf;

/// Arguments of `shiftnn inspect`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The .shift model.
    pub model: PathBuf,
    /// Print the description as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Kernel choice: --kernel, --isa, --fp16.
    #[command(flatten)]
    pub kernels: super::kernels::KernelArgs,
}

pub(crate) fn mode_name(m: Mode) -> &'static str {
    match m {
        Mode::Int8 => "int8",
        Mode::Float => "float",
    }
}

pub(crate) fn dtype_name(d: DType) -> &'static str {
    match d {
        DType::F32 => "f32",
        DType::I8 => "i8",
    }
}

pub(crate) fn weight_kind_name(k: WeightKind) -> &'static str {
    match k {
        WeightKind::Shift => "shift",
        WeightKind::I8 => "i8",
        WeightKind::F32 => "f32",
    }
}

/// Weighted-layer facts of node `i`: (kind, bits, weight bytes, params, MACs).
pub(crate) fn layer_weights(m: &Model, i: usize) -> Option<(WeightKind, u32, usize, usize, usize)> {
    let node = &m.graph().nodes[i];
    let w = node.op.weight()?;
    let size = |name: &str| m.tensor(name).map(|t| t.bytes.len()).unwrap_or(0);
    let bytes = size(&w.tensor) + size(&w.scale);
    let geom = m.conv_geom(i);
    let params = geom.map_or(0, |g| g.c_out * g.k());
    // A linear layer's geometry is one row of its batch.
    let rows = |g: &shiftnn_runtime::kernels::Conv2dGeom| match node.op {
        Op::Linear { .. } => m.graph().values[node.output].numel() / g.c_out.max(1),
        _ => 1,
    };
    let macs = geom.map_or(0, |g| g.macs() * rows(&g));
    let bits = match w.kind {
        WeightKind::Shift => w.bits as u32,
        WeightKind::I8 => 8,
        WeightKind::F32 => 32,
    };
    Some((w.kind, bits, bytes, params, macs))
}

/// Run `shiftnn inspect`.
pub fn main(a: Args) -> Result<()> {
    a.kernels.apply()?;
    let m = common::open_model(&a.model)?;
    let g = m.graph();
    let file_bytes = m.bytes().len();
    let io = |ids: &[usize]| -> Vec<serde_json::Value> {
        ids.iter()
            .map(|&v| {
                let v = &g.values[v];
                json!({"name": v.name, "shape": v.shape, "dtype": dtype_name(v.dtype)})
            })
            .collect()
    };
    let (mut tot_wbytes, mut tot_params, mut tot_macs, mut weighted) =
        (0usize, 0usize, 0usize, 0usize);
    let mut layers = Vec::new();
    let mut t = Table::new(&[
        ("#", true),
        ("layer", false),
        ("op", false),
        ("weights", false),
        ("w bytes", true),
        ("MACs", true),
        ("output", false),
        ("dtype", false),
        ("scale", true),
        ("kernel", false),
    ]);
    for (i, n) in g.nodes.iter().enumerate() {
        let out = &g.values[n.output];
        let kernel = kernel_name(&m, i);
        let w = layer_weights(&m, i);
        if let Some((_, _, b, p, mac)) = w {
            tot_wbytes += b;
            tot_params += p;
            tot_macs += mac;
            weighted += 1;
        }
        let scale = (out.dtype == DType::I8).then_some(out.scale);
        layers.push(json!({
            "name": n.name,
            "op": n.op.name(),
            "weights": w.map(|w| weight_kind_name(w.0)),
            "bits": w.map(|w| w.1),
            "weight_bytes": w.map_or(0, |w| w.2),
            "params": w.map_or(0, |w| w.3),
            "macs": w.map_or(0, |w| w.4),
            "output": {"name": out.name, "shape": out.shape, "dtype": dtype_name(out.dtype), "scale": scale},
            "kernel": kernel,
        }));
        t.row(vec![
            i.to_string(),
            n.name.clone(),
            n.op.name().into(),
            w.map_or("-".into(), |w| {
                format!("{} {}b", weight_kind_name(w.0), w.1)
            }),
            w.map_or("-".into(), |w| fmt_int(w.2)),
            w.map_or("-".into(), |w| fmt_int(w.4)),
            dims_x(&out.shape),
            dtype_name(out.dtype).into(),
            scale.map_or("-".into(), |s| format!("{s:.4e}")),
            kernel,
        ]);
    }
    let tensor_bytes: usize = m.tensors().iter().map(|(_, _, _, r)| r.len()).sum();
    if a.json {
        return common::print_json(&json!({
            "file": a.model.display().to_string(),
            "file_bytes": file_bytes,
            "format": g.format,
            "version": g.version,
            "mode": mode_name(g.mode),
            "fingerprint": format!("{:016x}", m.fingerprint()),
            "inputs": io(&g.inputs),
            "outputs": io(&g.outputs),
            "layers": layers,
            "totals": {
                "nodes": g.nodes.len(),
                "weighted_layers": weighted,
                "weight_bytes": tot_wbytes,
                "params": tot_params,
                "macs": tot_macs,
                "tensor_bytes": tensor_bytes,
                "tensors": m.tensors().len(),
            },
            "arena_bytes": m.arena_bytes(),
            "decoded_bytes": m.decoded_bytes(),
        }));
    }
    outln!("model:        {}", a.model.display());
    outln!("format:       {} v{}", g.format, g.version);
    outln!("mode:         {}", mode_name(g.mode));
    outln!("fingerprint:  {:016x}", m.fingerprint());
    for (what, ids) in [("input", &g.inputs), ("output", &g.outputs)] {
        for &v in ids.iter() {
            let v = &g.values[v];
            outln!(
                "{:<13} {} {} {}",
                format!("{what}:"),
                v.name,
                dims_x(&v.shape),
                dtype_name(v.dtype)
            );
        }
    }
    outln!();
    t.print();
    outln!();
    outln!(
        "layers:       {} nodes, {weighted} with weights",
        g.nodes.len()
    );
    outln!(
        "weights:      {} for {} params",
        fmt_bytes(tot_wbytes),
        fmt_int(tot_params)
    );
    outln!("MACs:         {} per inference", fmt_int(tot_macs));
    outln!(
        "tensors:      {} in {} tensors (weights, scales, biases, normalization)",
        fmt_bytes(tensor_bytes),
        m.tensors().len()
    );
    outln!("arena:        {}", fmt_bytes(m.arena_bytes()));
    if m.decoded_bytes() > 0 {
        outln!(
            "decoded:      {} of codes repacked at load for the GEMM kernels",
            fmt_bytes(m.decoded_bytes())
        );
    }
    outln!("file:         {}", fmt_bytes(file_bytes));
    Ok(())
}
