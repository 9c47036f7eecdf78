//! x86-64 SIMD kernels. Every public function here is safe: it checks the
//! CPU's level ([`crate::dispatch::Isa::available`]) and panics without it.
//!
//! * `avx2`: the tiled driver's row kernels (`dot`, `shift`, `lut`,
//!   `fexp`, `w8`) and the depthwise kernel for AVX2;
//! * `avx512`: the same families for AVX-512 (F/BW/VL/VBMI/VNNI):
//!   `vpermb` + `vpmultishiftqb` decode, `vpdpbusd` dot, `vpsllvw` shift,
//!   and the FMA baseline the `fexp` target is measured against;
//! * `pointwise`: the pixel-lane `dot` kernels for 1x1 and small-`k`
//!   convs (`vpmaddwd` on AVX2, `vpdpwssd` on AVX-512 VNNI).
//!
//! No `lut` kernel exists at the AVX-512 level: `lut` lost to `shift` and
//! `dot` on every layer on AVX2, and a forced `lut` still runs `avx2/lut`.

pub mod avx2;
pub mod avx512;
pub mod pointwise;
