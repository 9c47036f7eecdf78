//! `shiftnn convert`: ONNX to `.shift`, with a per-layer report.

use super::common::{self, fmt_bytes, fmt_db, fmt_int, Table};
use anyhow::{anyhow, bail, Context, Result};
use serde_json::json;
use shiftnn_converter::lower::{self, CalibData, CalibMethod, ConvertOptions};
use shiftnn_converter::npy;
use shiftnn_kernels::Bits;
use shiftnn_runtime::Mode;
use std::path::PathBuf;

/// Activation mode of the converted model.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModeArg {
    /// int8 activations with one calibrated scale per tensor (needs --calib).
    Int8,
    /// f32 activations; shift weights applied by exponent add.
    Float,
}

/// How int8 activation ranges are chosen.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum MethodArg {
    /// The largest absolute value seen during calibration.
    Minmax,
    /// A percentile of absolute values (see --percentile).
    Percentile,
}

/// Arguments of `shiftnn convert`.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:\n  \
    shiftnn convert model.onnx -o model.shift --bits 3 --mode float\n  \
    shiftnn convert model.onnx -o model.shift --bits 4 --mode int8 --calib calib.npy")]
pub struct Args {
    /// Float32 ONNX model to convert.
    pub input: PathBuf,
    /// Where to write the .shift model.
    #[arg(short, long, value_name = "OUT.shift")]
    pub output: PathBuf,
    /// Bits per shift weight: one sign bit and bits-1 exponent bits
    /// (3 bits: ±1, ±2, ±4, ±8 times a per-channel scale).
    #[arg(long, value_parser = clap::value_parser!(u32).range(2..=4))]
    pub bits: u32,
    /// Activation mode: int8 (smallest, fastest; needs --calib) or float.
    #[arg(long, value_enum)]
    pub mode: ModeArg,
    /// Calibration inputs: an .npy of shape (N, C, H, W), float32 or
    /// float64, preprocessed like the model's real inputs. Required in int8
    /// mode (activation ranges); in both modes it also selects shift
    /// weights by output error on these inputs, with bias correction.
    #[arg(long, value_name = "X.npy")]
    pub calib: Option<PathBuf>,
    /// Rule for int8 activation ranges.
    #[arg(long, value_enum, default_value_t = MethodArg::Minmax)]
    pub calib_method: MethodArg,
    /// Percentile of absolute activation values used as the range with
    /// --calib-method percentile.
    #[arg(long, default_value_t = 99.99, value_name = "P")]
    pub percentile: f64,
    /// Layers (node names) to keep at higher precision (f32 in float mode,
    /// int8 in int8 mode). Default: the first conv and the last weighted
    /// layer, as DenseShift does.
    #[arg(long, num_args = 1.., value_delimiter = ',', value_name = "LAYER", conflicts_with = "no_keep")]
    pub keep: Vec<String>,
    /// Quantize every weighted layer to shift codes, keeping none.
    #[arg(long)]
    pub no_keep: bool,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Run `shiftnn convert`.
pub fn main(a: Args) -> Result<()> {
    let bits = Bits::new(a.bits).ok_or_else(|| anyhow!("--bits {}: expected 2, 3 or 4", a.bits))?;
    if a.percentile.is_nan() || a.percentile <= 0.0 || a.percentile > 100.0 {
        bail!(
            "--percentile {}: expected a value in (0, 100]",
            a.percentile
        );
    }
    let graph = common::load_onnx(&a.input)?;
    let onnx_bytes = std::fs::metadata(&a.input)
        .map(|m| m.len() as usize)
        .unwrap_or(0);
    let mode = match a.mode {
        ModeArg::Int8 => Mode::Int8,
        ModeArg::Float => Mode::Float,
    };
    let calib = match (&a.calib, mode) {
        (Some(p), _) => {
            let arr = npy::read_f32(p)?;
            let (name, shape) = graph
                .inputs
                .first()
                .ok_or_else(|| anyhow!("{}: the model has no inputs", a.input.display()))?;
            let per: usize = shape.iter().product();
            let n = common::batch(
                &arr.shape,
                arr.data.len(),
                per,
                shape,
                &p.display().to_string(),
            )
            .with_context(|| format!("calibration data for input \"{name}\""))?;
            Some(CalibData { x: arr.data, n })
        }
        (None, Mode::Int8) => {
            bail!("--mode int8 needs calibration data: pass --calib X.npy with a batch (N, C, H, W) of representative, preprocessed inputs")
        }
        (None, Mode::Float) => None,
    };
    let n_calib = calib.as_ref().map_or(0, |c| c.n);
    let pb = common::progress(0, "calibrating", a.json || calib.is_none());
    let cb = |done: usize, total: usize| {
        if pb.length() != Some(total as u64) {
            pb.set_length(total as u64);
        }
        pb.set_position(done as u64);
    };
    let opts = ConvertOptions {
        bits,
        mode,
        keep: if a.no_keep {
            Some(vec![])
        } else if a.keep.is_empty() {
            None
        } else {
            Some(a.keep.clone())
        },
        calib,
        calib_method: match a.calib_method {
            MethodArg::Minmax => CalibMethod::MinMax,
            MethodArg::Percentile => CalibMethod::Percentile(a.percentile),
        },
        progress: Some(&cb),
    };
    let kept = opts
        .keep
        .clone()
        .unwrap_or_else(|| lower::default_keep(&graph));
    let result = lower::convert(&graph, &opts);
    pb.finish_and_clear();
    let (bytes, report) = result.with_context(|| format!("converting {}", a.input.display()))?;
    std::fs::write(&a.output, &bytes)
        .with_context(|| format!("cannot write {}", a.output.display()))?;

    let weight_bytes: usize = report.layers.iter().map(|l| l.bytes).sum();
    let params: usize = report.layers.iter().map(|l| l.params).sum();
    let bpw = if params > 0 {
        weight_bytes as f64 * 8.0 / params as f64
    } else {
        0.0
    };
    let shift: Vec<_> = report
        .layers
        .iter()
        .filter(|l| l.weights == "shift")
        .collect();
    let lossy: Vec<&str> = shift
        .iter()
        .filter(|l| !l.lossless)
        .map(|l| l.name.as_str())
        .collect();
    let all_lossless = !shift.is_empty() && lossy.is_empty();
    let mode_name = match mode {
        Mode::Int8 => "int8",
        Mode::Float => "float",
    };

    if a.json {
        return common::print_json(&json!({
            "input": a.input.display().to_string(),
            "output": a.output.display().to_string(),
            "mode": mode_name,
            "bits": a.bits,
            "kept": kept,
            "calib_samples": n_calib,
            "layers": report.layers,
            "nodes": report.nodes,
            "fused": report.fused,
            "weight_bytes": weight_bytes,
            "params": params,
            "bits_per_weight": bpw,
            "file_bytes": report.file_bytes,
            "onnx_bytes": onnx_bytes,
            "arena_bytes": report.arena_bytes,
            "shift_layers": shift.len(),
            "all_shift_lossless": all_lossless,
        }));
    }

    let mut t = Table::new(&[
        ("layer", false),
        ("op", false),
        ("weights", false),
        ("bits", true),
        ("params", true),
        ("bytes", true),
        ("SQNR dB", true),
        ("lossless", false),
    ]);
    for l in &report.layers {
        t.row(vec![
            l.name.clone(),
            l.op.clone(),
            l.weights.clone(),
            l.bits.to_string(),
            fmt_int(l.params),
            fmt_int(l.bytes),
            fmt_db(l.sqnr_db),
            if l.lossless { "yes" } else { "no" }.into(),
        ]);
    }
    outln!(
        "{} -> {} ({mode_name} activations, {}-bit shift weights{})",
        a.input.display(),
        a.output.display(),
        a.bits,
        if n_calib > 0 {
            format!(", calibrated on {n_calib} samples")
        } else {
            String::new()
        }
    );
    outln!();
    t.print();
    outln!();
    outln!(
        "nodes:        {} after fusing {} BatchNorm/activation nodes",
        report.nodes,
        report.fused
    );
    outln!(
        "weights:      {} in {} params, {bpw:.2} bits/weight (including channel scales)",
        fmt_bytes(weight_bytes),
        fmt_int(params)
    );
    let ratio = if report.file_bytes > 0 {
        onnx_bytes as f64 / report.file_bytes as f64
    } else {
        0.0
    };
    outln!(
        "file:         {} (ONNX {}, {ratio:.1}x smaller)",
        fmt_bytes(report.file_bytes),
        fmt_bytes(onnx_bytes)
    );
    outln!("arena:        {}", fmt_bytes(report.arena_bytes));
    if !kept.is_empty() {
        outln!("kept:         {}", kept.join(", "));
    }
    if shift.is_empty() {
        outln!("no layer was quantized to shift codes (all weighted layers kept)");
    } else if all_lossless {
        outln!(
            "all {} shift layers converted losslessly (weights were already sign/power-of-two)",
            shift.len()
        );
    } else if lossy.len() == shift.len() {
        outln!(
            "all {} shift layers are lossy (weights were not sign/power-of-two; see SQNR)",
            shift.len()
        );
    } else {
        outln!(
            "{} of {} shift layers are lossy: {}",
            lossy.len(),
            shift.len(),
            lossy.join(", ")
        );
    }
    Ok(())
}
