//! Compile-time detection of the Cortex-M DSP extension (SIMD32: `SMLAD`,
//! `SXTB16`, ...), emitted as `cfg(shiftnn_dsp)`.
//!
//! Bare-metal Cortex-M has no runtime feature detection worth the name, so
//! the target decides. `cfg(target_feature = "dsp")` would be the natural
//! test, but Arm target features are unstable and stable rustc hides them
//! from `cfg` (and from `CARGO_CFG_TARGET_FEATURE`), so this reads the
//! target name and the codegen flags instead:
//!
//! * `thumbv7em-*` (Cortex-M4/M7): ARMv7E-M always has the DSP extension;
//! * `thumbv8m.main-*` (Cortex-M33/M35P/M55/M85): only with
//!   `-C target-feature=+dsp` or a `-C target-cpu` that LLVM gives DSP;
//! * a `dsp` in `CARGO_CFG_TARGET_FEATURE` (nightly) counts too;
//!   `-C target-feature=-dsp` turns it off.

use std::env;

fn main() {
    println!("cargo::rustc-check-cfg=cfg(shiftnn_dsp)");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=CARGO_ENCODED_RUSTFLAGS");
    if dsp() {
        println!("cargo:rustc-cfg=shiftnn_dsp");
    }
}

fn dsp() -> bool {
    if env::var("CARGO_CFG_TARGET_ARCH").as_deref() != Ok("arm") {
        return false;
    }
    let target = env::var("TARGET").unwrap_or_default();
    let flags = env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    // `-C a=b`, `-Ca=b` and `--codegen a=b` all leave `a=b` in one piece.
    let mut cpu = "";
    let mut feature: Option<bool> = None;
    for f in flags.split('\x1f') {
        let f = f
            .strip_prefix("-C")
            .or_else(|| f.strip_prefix("--codegen"))
            .unwrap_or(f)
            .trim_start_matches('=');
        if let Some(c) = f.strip_prefix("target-cpu=") {
            cpu = c;
        } else if let Some(list) = f.strip_prefix("target-feature=") {
            for item in list.split(',') {
                match item {
                    "+dsp" => feature = Some(true),
                    "-dsp" => feature = Some(false),
                    _ => {}
                }
            }
        }
    }
    if let Some(on) = feature {
        return on;
    }
    let features = env::var("CARGO_CFG_TARGET_FEATURE").unwrap_or_default();
    if features.split(',').any(|f| f == "dsp") {
        return true;
    }
    target.starts_with("thumbv7em")
        || (target.starts_with("thumbv8m.main")
            && matches!(
                cpu,
                "cortex-m33" | "cortex-m35p" | "cortex-m52" | "cortex-m55" | "cortex-m85"
            ))
}
