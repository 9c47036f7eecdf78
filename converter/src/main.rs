//! `shiftnn`: convert ONNX models to `.shift`, inspect, run, evaluate,
//! benchmark and diff them.

mod cli;

use clap::Parser;

fn main() {
    let args = match cli::Cli::try_parse() {
        Ok(a) => a,
        Err(e) => {
            // Help and version go to stdout with status 0; usage errors are
            // printed by clap ("error: ...") and exit with status 1.
            let code = if e.use_stderr() { 1 } else { 0 };
            let _ = e.print();
            std::process::exit(code);
        }
    };
    if let Err(e) = cli::run(args) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
