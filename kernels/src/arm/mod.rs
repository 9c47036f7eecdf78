//! Cortex-M kernels (Thumb-2), compiled on `target_arch = "arm"`.
//!
//! * [`dsp`]: with the DSP extension (`cfg(shiftnn_dsp)`, set by the
//!   crate's build script for `thumbv7em-*` and for `thumbv8m.main-*` with
//!   `+dsp` or a DSP-capable `target-cpu`; [`crate::dispatch::Isa::Dsp`]).
//!
//! Both int8 kernels of the DSP level share one driver (`patch`): output
//! pixels in tiles of four, each tile's patches gathered once as int16
//! pairs into a 2 KiB stack buffer (interior pixels without per-tap bounds
//! checks) and reused by every output channel of the group.

#[cfg(shiftnn_dsp)]
pub mod dsp;
#[cfg(shiftnn_dsp)]
mod patch;
