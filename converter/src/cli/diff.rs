//! `shiftnn diff`: per-layer error of a `.shift` model against the float
//! ONNX model on one input.

use super::common::{self, fmt_db, Table};
use super::inspect::dtype_name;
use anyhow::{anyhow, bail, Result};
use serde_json::json;
use shiftnn_converter::npy;
use shiftnn_runtime::{Session, ValueView};
use std::path::PathBuf;

/// Arguments of `shiftnn diff`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The float ONNX model.
    pub onnx: PathBuf,
    /// The .shift model converted from it.
    pub model: PathBuf,
    /// Input: an .npy of shape (N, ...); the first item is used.
    #[arg(short, long, value_name = "X.npy")]
    pub input: PathBuf,
    /// Print results as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Run `shiftnn diff`.
pub fn main(a: Args) -> Result<()> {
    let rg = common::load_onnx(&a.onnx)?;
    let m = common::open_model(&a.model)?;
    let g = m.graph();
    if g.inputs.len() != 1 || rg.inputs.len() != 1 {
        bail!("`diff` supports single-input models");
    }
    let x = npy::read_f32(&a.input)?;
    let per = m.input_len(0);
    common::batch(
        &x.shape,
        x.data.len(),
        per,
        &g.values[g.inputs[0]].shape,
        &a.input.display().to_string(),
    )?;
    let x0 = &x.data[..per];
    let (rin, rshape) = &rg.inputs[0];
    if rshape.iter().product::<usize>() != per {
        bail!(
            "the ONNX model's input has shape {} but the .shift model's has {}",
            common::dims_paren(rshape),
            common::dims_paren(&g.values[g.inputs[0]].shape)
        );
    }
    let acts = shiftnn_converter::reference::run_all(&rg, &[(rin.as_str(), x0)])
        .map_err(|e| anyhow!("reference executor: {e}"))?;

    // Every node's output, as f32.
    let mut got: Vec<Option<Vec<f32>>> = vec![None; g.nodes.len()];
    let mut outs: Vec<Vec<f32>> = (0..g.outputs.len())
        .map(|i| vec![0f32; m.output_len(i)])
        .collect();
    {
        let mut s = Session::new(&m).map_err(common::rt)?;
        let mut o: Vec<&mut [f32]> = outs.iter_mut().map(|v| v.as_mut_slice()).collect();
        let mut obs = |i: usize, v: ValueView<'_>| {
            let f = match v {
                ValueView::F32(d) => d.to_vec(),
                ValueView::I8(d, scale) => d.iter().map(|&q| q as f32 * scale).collect(),
            };
            if let Some(slot) = got.get_mut(i) {
                *slot = Some(f);
            }
        };
        s.run_observed(&[x0], &mut o, Some(&mut obs))
            .map_err(common::rt)?;
    }

    let mut rows = Vec::new();
    let mut t = Table::new(&[
        ("layer", false),
        ("op", false),
        ("value", false),
        ("dtype", false),
        ("SQNR dB", true),
        ("max |err|", true),
        ("max |ref|", true),
    ]);
    for (i, n) in g.nodes.iter().enumerate() {
        let v = &g.values[n.output];
        let (Some(r), Some(y)) = (acts.get(&v.name), &got[i]) else {
            continue;
        };
        if r.len() != y.len() {
            continue;
        }
        let (db, maxe) = common::sqnr(r, y);
        let rmax = r.iter().fold(0f32, |m, &x| m.max(x.abs()));
        t.row(vec![
            n.name.clone(),
            n.op.name().into(),
            v.name.clone(),
            dtype_name(v.dtype).into(),
            fmt_db(db),
            common::fmt_num(maxe),
            common::fmt_num(rmax as f64),
        ]);
        rows.push(json!({
            "node": n.name, "op": n.op.name(), "value": v.name, "dtype": dtype_name(v.dtype),
            "sqnr_db": db.filter(|d| d.is_finite()), "exact": db.is_none(), "max_abs_err": maxe, "max_abs_ref": rmax,
        }));
    }
    let rout_name = rg
        .outputs
        .first()
        .ok_or_else(|| anyhow!("the ONNX model has no outputs"))?;
    let rout = acts
        .get(rout_name)
        .ok_or_else(|| anyhow!("reference output \"{rout_name}\" missing"))?;
    if rout.len() != outs[0].len() {
        bail!(
            "the ONNX output has {} values but the .shift output has {}",
            rout.len(),
            outs[0].len()
        );
    }
    let (odb, omax) = common::sqnr(rout, &outs[0]);
    let same_top1 = common::argmax(rout) == common::argmax(&outs[0]);
    if a.json {
        return common::print_json(&json!({
            "layers": rows,
            "output": {"name": rout_name, "sqnr_db": odb.filter(|d| d.is_finite()), "exact": odb.is_none(),
                       "max_abs_err": omax, "same_top1": same_top1},
        }));
    }
    outln!(
        "{} vs {} on the first item of {}",
        a.model.display(),
        a.onnx.display(),
        a.input.display()
    );
    outln!();
    t.print();
    outln!();
    outln!(
        "output {rout_name}: SQNR {} dB, max |err| {}, top-1 {}",
        fmt_db(odb),
        common::fmt_num(omax),
        if same_top1 { "agrees" } else { "DIFFERS" }
    );
    Ok(())
}
