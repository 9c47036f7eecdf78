//! x86-64 SIMD kernels. Every public function here is safe: it checks the
//! CPU's level ([`crate::dispatch::Isa::available`]) and panics without it.
//!
//! `avx2`: the tiled driver's row kernels (`dot`, `shift`, `lut`, `fexp`,
//! `w8`) and the depthwise kernel; `pointwise`: the pixel-lane `dot`
//! kernels for 1x1 and small-`k` convs.
//!
//! Only AVX2 kernels exist so far. The AVX-512 level (`vpsllvw` shift,
//! `vpermb`/`vpmultishiftqb` decode + `vpdpbusd` dot) is detected by
//! [`crate::dispatch`] but has no kernel: the development machine (Zen3)
//! has no AVX-512 and qemu cannot emulate it, so such kernels could not be
//! tested; CPUs with AVX-512 run the AVX2 kernels.

pub mod avx2;
pub mod pointwise;
