//! `shiftnn eval`: top-1 accuracy on labelled data, optionally against the
//! float ONNX model through the reference executor.

use super::common::{self, argmax};
use anyhow::{bail, Result};
use serde_json::json;
use shiftnn_converter::npy;
use std::path::PathBuf;

/// Arguments of `shiftnn eval`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The .shift model.
    pub model: PathBuf,
    /// Labelled data: an .npz with `x` (float32 (N, C, H, W)) and `y`
    /// (integer class labels, (N,)).
    #[arg(long, value_name = "D.npz")]
    pub data: PathBuf,
    /// The float ONNX model the .shift model came from: also report its top-1
    /// (reference executor) and the top-1 agreement between the two.
    #[arg(long, value_name = "IN.onnx")]
    pub reference: Option<PathBuf>,
    /// Evaluate only the first N samples.
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Threads; samples are split across them, one session each (results do
    /// not depend on it). Default: all cores.
    #[arg(long)]
    pub threads: Option<usize>,
    /// Print {"top1", "n", "reference_top1", "agreement"} as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Kernel choice: --kernel, --isa, --fp16.
    #[command(flatten)]
    pub kernels: super::kernels::KernelArgs,
}

/// Run `shiftnn eval`.
pub fn main(a: Args) -> Result<()> {
    a.kernels.apply()?;
    let m = common::open_model(&a.model)?;
    let g = m.graph();
    let dname = a.data.display().to_string();
    let mut npz = npy::Npz::open(&a.data)?;
    let x = npz.f32("x")?;
    let y = npz.i64("y")?;
    if g.inputs.len() != 1 {
        bail!(
            "{}: the model has {} inputs; `eval` supports single-input models",
            a.model.display(),
            g.inputs.len()
        );
    }
    let in_shape = &g.values[g.inputs[0]].shape;
    let per = m.input_len(0);
    let total = common::batch(
        &x.shape,
        x.data.len(),
        per,
        in_shape,
        &format!("{dname}: array 'x'"),
    )?;
    if y.data.len() != total {
        bail!(
            "{dname}: 'y' holds {} labels for {total} samples in 'x' (shape {})",
            y.data.len(),
            common::dims_paren(&y.shape)
        );
    }
    let n = a.limit.map_or(total, |l| l.min(total));
    if n == 0 {
        bail!("--limit 0: nothing to evaluate");
    }
    let reference = a
        .reference
        .as_ref()
        .map(|p| common::load_onnx(p))
        .transpose()?;
    let threads = a.threads.unwrap_or_else(common::default_threads).max(1);
    let xs = &x.data[..n * per];
    let labels = &y.data[..n];

    let pb = common::progress(n as u64, "shiftnn", a.json);
    let out = common::run_batch(&m, xs, n, threads, &pb)?;
    pb.finish_and_clear();
    let k = m.output_len(0);
    let pred: Vec<usize> = out.chunks_exact(k).map(argmax).collect();
    let correct = pred
        .iter()
        .zip(labels)
        .filter(|(&p, &l)| p as i64 == l)
        .count();
    let top1 = correct as f64 / n as f64;

    let mut ref_stats = None;
    if let Some(rg) = &reference {
        let pb = common::progress(n as u64, "reference", a.json);
        let r = common::run_reference(rg, xs, n, threads, &pb)?;
        pb.finish_and_clear();
        let rpred: Vec<usize> = r.iter().map(|o| argmax(o)).collect();
        let rcorrect = rpred
            .iter()
            .zip(labels)
            .filter(|(&p, &l)| p as i64 == l)
            .count();
        let agree = rpred.iter().zip(&pred).filter(|(a, b)| a == b).count();
        ref_stats = Some((
            rcorrect as f64 / n as f64,
            agree as f64 / n as f64,
            rcorrect,
            agree,
        ));
    }

    if a.json {
        let mut v = json!({"top1": top1, "n": n});
        if let Some((rt, ag, _, _)) = ref_stats {
            v["reference_top1"] = json!(rt);
            v["agreement"] = json!(ag);
        }
        outln!("{v}");
        return Ok(());
    }
    outln!(
        "samples:          {n}{}",
        if n < total {
            format!(" (of {total})")
        } else {
            String::new()
        }
    );
    outln!(
        "top-1:            {:.2}% ({correct}/{n})  {}",
        top1 * 100.0,
        a.model.display()
    );
    if let (Some((rt, ag, rc, agn)), Some(p)) = (ref_stats, &a.reference) {
        outln!(
            "reference top-1:  {:.2}% ({rc}/{n})  {}",
            rt * 100.0,
            p.display()
        );
        outln!("difference:       {:+.2} points", (top1 - rt) * 100.0);
        outln!(
            "agreement:        {:.2}% ({agn}/{n} same top-1 class)",
            ag * 100.0
        );
    }
    Ok(())
}
