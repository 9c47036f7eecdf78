//! x86-64 SIMD kernels. Every public function here is safe: it checks the
//! CPU's level ([`crate::dispatch::Isa::available`]) and panics without it.
//!
//! * `avx2`: the tiled driver's row kernels (`dot`, `shift`, `lut`,
//!   `fexp`, `w8`) and the depthwise kernel for AVX2;
//! * `avx512`: the same families for AVX-512 (F/BW/VL/VBMI/VNNI):
//!   `vpermb` + `vpmultishiftqb` decode, `vpdpbusd` dot, `vpsllvw` shift,
//!   and the FMA baseline the `fexp` target is measured against;
//! * `gemm`: the pixel-lane int8 GEMM on rows decoded at load
//!   ([`crate::gemm`]), `vpdpbusd` with broadcast weights;
//! * `gemm_avx2`: a pixel-lane GEMM for plain AVX2, `vpmaddwd` on `i16`
//!   pairs of the decoded rows' true weights;
//! * `gemm_vnni`: the same GEMM on `ymm` for the AVX-VNNI level (VEX
//!   AVX-VNNI or EVEX AVX-512 VL + VNNI), on the panel layout of
//!   `neondot/gemm-dot`;
//! * `gemm_shift`: its multiplication-free twin on codes regrouped by
//!   exponent ([`crate::lists`]): one `vpaddw` per weight and 32 pixels;
//! * `gemm_fexp`: the float-mode pixel-lane GEMM on the packed codes:
//!   an exponent add (`vpaddd`) and `vaddps` per weight and 16 pixels,
//!   and its FMA baseline;
//! * `pointwise`: the pixel-lane `dot` kernels for 1x1 and small-`k`
//!   convs (`vpmaddwd` on AVX2, `vpdpwssd` on AVX-512 VNNI);
//! * `lut`: the AVX-512 `lut` kernel (`avx512/lut`): signed tables per
//!   activation, `vpermi2w` lookups of 4 rows x 8 activations, index words
//!   transposed by `vpermt2b` once per call. Like `avx2/lut` it runs only
//!   when `lut` is forced: it beats `avx512/shift` by 1.0-1.6x at b = 4 but
//!   loses to `dot` everywhere.

/// `pub mod dw`: [`crate::depthwise`] compiled with `$features` (the taps
/// of a chunk of a channel's flattened plane, vectorized by the compiler;
/// no multiply in `dw::shift_rows`, which holds that inner loop and stays
/// out of line so the no-multiply check finds it), registered as `$name`;
/// and its float twin [`crate::depthwise_fexp`] (inner loop
/// `dw::fexp_rows`), registered as `$fname`.
macro_rules! depthwise_kernel {
    ($isa:ident, $features:literal, $name:literal, $fname:literal) => {
        /// Depthwise layers: [`crate::depthwise`] compiled for this level.
        pub mod dw {
            use crate::depthwise::{Scratch, Taps};
            use crate::dispatch::Isa;
            use crate::{Conv2dGeom, PackedRows, Requant};

            /// All taps of a chunk: `acc = init + sum ±(src << p)`.
            #[inline(never)]
            #[target_feature(enable = $features)]
            fn shift_rows(acc: &mut [i32], tmp: &mut Scratch, src: &[i8], taps: &Taps) {
                crate::depthwise::accumulate(acc, tmp, src, taps)
            }

            #[target_feature(enable = $features)]
            fn conv(
                g: &Conv2dGeom,
                x: &[i8],
                w: &PackedRows,
                oc0: usize,
                rq: &[Requant],
                out: &mut [i8],
            ) {
                // The closure inherits the features of `conv`, so calling
                // `shift_rows` (which needs nothing more) is safe here.
                crate::depthwise::shift_i8(g, x, w, oc0, rq, out, |a, tmp, src, taps| {
                    shift_rows(a, tmp, src, taps)
                })
            }

            #[doc = concat!("`", $name, "`: equal to [`crate::scalar::conv_shift_i8`] on")]
            /// depthwise layers ([`crate::depthwise::applies`]); no multiply
            /// in the taps. Panics if the CPU lacks the level or the layer
            /// is not depthwise.
            pub fn conv_shift_i8(
                g: &Conv2dGeom,
                x: &[i8],
                w: &PackedRows,
                oc0: usize,
                rq: &[Requant],
                out: &mut [i8],
            ) {
                assert!(
                    Isa::$isa.available(),
                    concat!($name, " on a CPU without that level")
                );
                // SAFETY: the level, hence `$features`, is available
                // (checked above).
                unsafe { conv(g, x, w, oc0, rq, out) }
            }

            /// One float tap along a run of output columns.
            #[inline(never)]
            #[target_feature(enable = $features)]
            fn fexp_rows(acc: &mut [f32], src: &[f32], neg: bool, p: u32) -> bool {
                crate::depthwise_fexp::tap(acc, src, neg, p)
            }

            #[target_feature(enable = $features)]
            fn conv_f(
                g: &Conv2dGeom,
                x: &[f32],
                w: &PackedRows,
                oc0: usize,
                ep: &[crate::scalar::Affine],
                out: &mut [f32],
            ) {
                // As in `conv`: the closure inherits the features.
                crate::depthwise_fexp::fexp_f32(g, x, w, oc0, ep, out, |a, s, n, p| {
                    fexp_rows(a, s, n, p)
                })
            }

            #[doc = concat!("`", $fname, "`: equal, bit for bit, to")]
            /// [`crate::scalar::conv_shift_f32`] on depthwise layers
            /// ([`crate::depthwise::applies`]); no multiply in the taps.
            /// Panics if the CPU lacks the level or the layer is not
            /// depthwise.
            pub fn conv_fexp_f32(
                g: &Conv2dGeom,
                x: &[f32],
                w: &PackedRows,
                oc0: usize,
                ep: &[crate::scalar::Affine],
                out: &mut [f32],
            ) {
                assert!(
                    Isa::$isa.available(),
                    concat!($fname, " on a CPU without that level")
                );
                // SAFETY: the level, hence `$features`, is available
                // (checked above).
                unsafe { conv_f(g, x, w, oc0, ep, out) }
            }
        }
    };
}
use depthwise_kernel;

pub mod avx2;
pub mod avx512;
pub mod gemm;
pub mod gemm_avx2;
pub mod gemm_fexp;
pub mod gemm_shift;
pub mod gemm_vnni;
pub mod lut;
pub mod pointwise;
