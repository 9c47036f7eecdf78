//! `shiftnn run`: a batch of inputs through a `.shift` model.

use super::common;
use anyhow::Result;
use shiftnn_converter::npy;
use std::path::PathBuf;

/// Arguments of `shiftnn run`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The .shift model.
    pub model: PathBuf,
    /// Inputs: an .npy of shape (N, ...) (float32 or float64), one model
    /// input per item, e.g. (N, C, H, W).
    #[arg(short, long, value_name = "X.npy")]
    pub input: PathBuf,
    /// Where to write the outputs: float32 .npy of shape (N, ...).
    #[arg(short, long, value_name = "Y.npy")]
    pub output: PathBuf,
    /// Threads (samples are split across threads; a single sample uses them
    /// inside its layers). Default: all cores.
    #[arg(long)]
    pub threads: Option<usize>,
    /// Kernel choice: --kernel, --isa, --fp16.
    #[command(flatten)]
    pub kernels: super::kernels::KernelArgs,
}

/// Run `shiftnn run`.
pub fn main(a: Args) -> Result<()> {
    a.kernels.apply()?;
    let m = common::open_model(&a.model)?;
    let g = m.graph();
    let x = npy::read_f32(&a.input)?;
    if g.inputs.len() != 1 {
        anyhow::bail!(
            "{}: the model has {} inputs; `run` supports single-input models",
            a.model.display(),
            g.inputs.len()
        );
    }
    let in_shape = &g.values[g.inputs[0]].shape;
    let n = common::batch(
        &x.shape,
        x.data.len(),
        m.input_len(0),
        in_shape,
        &a.input.display().to_string(),
    )?;
    let threads = a.threads.unwrap_or_else(common::default_threads);
    let y = common::run_batch(&m, &x.data, n, threads, &indicatif::ProgressBar::hidden())?;
    let out_shape = &g.values[g.outputs[0]].shape;
    let mut shape = vec![n];
    shape.extend_from_slice(if out_shape.first() == Some(&1) {
        &out_shape[1..]
    } else {
        &out_shape[..]
    });
    npy::write_f32(&a.output, &shape, &y)?;
    if g.outputs.len() > 1 {
        eprintln!(
            "note: the model has {} outputs; only the first was written",
            g.outputs.len()
        );
    }
    eprintln!(
        "wrote {} ({} samples, shape {})",
        a.output.display(),
        n,
        common::dims_paren(&shape)
    );
    Ok(())
}
