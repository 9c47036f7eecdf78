//! The `shiftnn` command line: one module per command, shared helpers in
//! [`common`], and the kernel naming rule in [`kernels`].

/// `println!` to stdout that ends the process quietly when stdout is closed
/// (`shiftnn inspect m.shift | head`) instead of panicking.
macro_rules! outln {
    () => { $crate::cli::common::out(format_args!("")) };
    ($($t:tt)*) => { $crate::cli::common::out(format_args!($($t)*)) };
}

pub mod adapt;
pub mod bench;
pub mod check;
pub mod common;
pub mod convert;
pub mod diff;
pub mod eval;
pub mod inspect;
pub mod kernels;
pub mod run;

use anyhow::Result;
use clap::{Parser, Subcommand};

/// Edge inference for DenseShift shift networks (weights w = s * 2^p).
///
/// Convert a float ONNX model into a compact `.shift` model, then inspect,
/// run, evaluate, benchmark and compare it against the float model.
#[derive(Parser, Debug)]
#[command(name = "shiftnn", version, propagate_version = true)]
pub struct Cli {
    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Commands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Convert a float ONNX model into a .shift model (shift-quantized weights,
    /// float or int8 activations) and report what each layer lost.
    Convert(convert::Args),
    /// List every node of an ONNX model as supported or not, with the reason;
    /// exits with status 1 if anything is unsupported.
    Check(check::Args),
    /// Describe a .shift model: mode, inputs and outputs, per-layer weights,
    /// MACs, output tensors and kernels, memory.
    Inspect(inspect::Args),
    /// Run a .shift model on a batch of inputs from an .npy file and write the
    /// outputs as an .npy file.
    Run(run::Args),
    /// Measure top-1 accuracy of a .shift model on labelled data (.npz with
    /// `x` and `y`), optionally against the float ONNX model.
    Eval(eval::Args),
    /// Measure latency percentiles, peak memory and a per-layer time profile
    /// of a .shift model on random input.
    Bench(bench::Args),
    /// Compare every activation of a .shift model with the float ONNX model on
    /// one input: SQNR and maximum absolute error per layer.
    Diff(diff::Args),
    /// Run a cloud adaptation worker: consume uploaded samples over MQTT,
    /// distill the ONNX teacher into each device's normalization parameters
    /// and publish signed patches.
    Cloud(adapt::CloudArgs),
    /// Run the cloud-edge adaptation demo on loopback: a mosquitto broker,
    /// 2 cloud workers, 4 devices streaming corrupted Fashion-MNIST.
    AdaptDemo(adapt::DemoArgs),
    /// One demo device (started by adapt-demo).
    #[command(hide = true)]
    AdaptDevice(adapt::DeviceArgs),
    /// Inference latency with and without concurrent patch applies (the
    /// last step of adapt-demo, alone).
    #[command(hide = true)]
    AdaptProbe(adapt::ProbeArgs),
}

/// Run a parsed command line.
pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Convert(a) => convert::main(a),
        Command::Check(a) => check::main(a),
        Command::Inspect(a) => inspect::main(a),
        Command::Run(a) => run::main(a),
        Command::Eval(a) => eval::main(a),
        Command::Bench(a) => bench::main(a),
        Command::Diff(a) => diff::main(a),
        Command::Cloud(a) => adapt::cloud_main(a),
        Command::AdaptDemo(a) => adapt::demo_main(a),
        Command::AdaptDevice(a) => adapt::device_main(a),
        Command::AdaptProbe(a) => adapt::probe_main(a),
    }
}
