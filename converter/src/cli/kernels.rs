//! Which kernel runs a layer, as reported by `inspect` and `bench`: the
//! kernels crate's dispatcher decides (CPU features detected once, the
//! `SHIFTNN_ISA` / `SHIFTNN_KERNEL` / `SHIFTNN_FP16` overrides or `--isa` /
//! `--kernel` / `--fp16`), so the report names exactly what `Session::run`
//! executes.

use anyhow::{anyhow, Result};
use shiftnn_kernels::dispatch::{self, Family, Isa};
use shiftnn_runtime::{DType, Mode, Model, Op, WeightKind};

/// The kernel that runs node `i` of `model`: `isa/family` for conv and
/// linear layers, `rows` for int8 max pooling (the row-vectorized
/// `shiftnn_kernels::pool`), the level of the vectorized int8 quantize and
/// residual add (`shiftnn_kernels::elementwise::kernel_name`), `scalar`
/// for everything else.
pub fn kernel_name(model: &Model, i: usize) -> String {
    let node = &model.graph().nodes[i];
    if matches!(node.op, Op::MaxPool { .. }) && model.graph().values[node.output].dtype == DType::I8
    {
        return "rows".to_string();
    }
    let int8_out = model.graph().values[node.output].dtype == DType::I8;
    if int8_out && matches!(node.op, Op::Quantize | Op::Add { .. }) {
        // The vectorized quantize and residual add (`elementwise`).
        return shiftnn_kernels::elementwise::kernel_name().to_string();
    }
    if let Some(name) = model.batched_linear_kernel(i) {
        // A batched linear layer through a pixel-lane GEMM.
        return name.to_string();
    }
    match (node.op.weight(), model.conv_geom(i)) {
        (Some(_), Some(g)) if model.decoded_lists(i).is_some() => {
            // What `Session::run` runs for a layer regrouped at load.
            dispatch::lists_kernel(&g)
                .map_or_else(
                    || dispatch::kernel_name(dispatch::Op::ShiftI8, &g),
                    |k| k.name,
                )
                .to_string()
        }
        (Some(_), Some(g)) if model.decoded_rows(i).is_some() => {
            // What `Session::run` runs for a layer decoded at load.
            dispatch::decoded_kernel(&g)
                .map_or_else(
                    || dispatch::kernel_name(dispatch::Op::ShiftI8, &g),
                    |k| k.name,
                )
                .to_string()
        }
        (Some(w), Some(g)) => {
            let op = match (w.kind, model.mode()) {
                (WeightKind::Shift, Mode::Int8) => dispatch::Op::ShiftI8,
                (WeightKind::Shift, Mode::Float) => dispatch::Op::ShiftF32,
                (WeightKind::I8, _) => dispatch::Op::W8I8,
                (WeightKind::F32, _) => dispatch::Op::F32,
            };
            dispatch::kernel_name(op, &g).to_string()
        }
        _ => "scalar".to_string(),
    }
}

/// The kernel-choice flags `run`, `eval`, `bench` and `inspect` share;
/// each overrides its environment variable for this process.
#[derive(clap::Args, Debug)]
pub struct KernelArgs {
    /// Force a kernel family for conv and linear layers: scalar, shift,
    /// dot, lut or fexp (default: the fastest this CPU has). Same as the
    /// SHIFTNN_KERNEL environment variable.
    #[arg(long, value_name = "FAMILY")]
    pub kernel: Option<String>,
    /// Cap the instruction-set level: scalar, avx2, avxvnni, avx512, neon
    /// or neondot (to test a lower path). Same as SHIFTNN_ISA.
    #[arg(long, value_name = "LEVEL")]
    pub isa: Option<String>,
    /// Float-mode models: allow f16 arithmetic in conv and linear layers
    /// where the CPU has it (aarch64 FEAT_FP16: `neonfp16/fexp`; no effect
    /// elsewhere). Faster, less exact (activations and pairs of terms
    /// rounded to f16). Same as SHIFTNN_FP16=1.
    #[arg(long)]
    pub fp16: bool,
}

impl KernelArgs {
    /// Apply the flags given (the environment decides the others).
    pub fn apply(&self) -> Result<()> {
        if let Some(k) = &self.kernel {
            let f = Family::parse(k)
                .ok_or_else(|| anyhow!("--kernel {k}: expected scalar, shift, dot, lut or fexp"))?;
            dispatch::set_family(Some(f));
        }
        if let Some(l) = &self.isa {
            let i = Isa::parse(l).ok_or_else(|| anyhow!("--isa {l}: unknown ISA level"))?;
            dispatch::set_isa_cap(Some(i));
        }
        if self.fp16 {
            dispatch::set_fp16(true);
        }
        Ok(())
    }
}
