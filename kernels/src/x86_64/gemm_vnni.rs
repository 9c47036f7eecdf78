//! `avxvnni/gemm-dot`: the pixel-lane int8 GEMM on decoded rows
//! ([`crate::gemm`]) with `vpdpbusd` on `ymm`, for CPUs of the
//! [`Isa::AvxVnni`] level (AVX-VNNI, or AVX-512 VL + VNNI): the twin of
//! `avx512/gemm-dot` ([`crate::x86_64::gemm`]) without AVX-512's
//! permutes and masks, built like `neondot/gemm-dot`
//! (`crate::aarch64::gemm`), whose panel layout it shares
//! (`crate::panel`).
//!
//! * **Panel.** For a block of up to 64 output pixels, sub-blocks of 8
//!   pixels, `[pixels / 8][k / 4][8][4]` bytes: a sub-block's step of four
//!   weights is one 32-byte vector. `vpdpbusd` multiplies unsigned bytes by
//!   signed ones, so activations go in as `x ^ 0x80` (`x + 128`, padded
//!   taps `0x80`) and each row's sums start at its `corr`
//!   ([`DecodedRows::corr`]), as in the AVX-512 kernel. The taps are
//!   gathered into byte rows and four of them interleave into
//!   pixel-major words with two rounds of `punpck`. A tap's copies (runs
//!   of pixels within output rows, clipped to the input) are the same
//!   for every input channel, so they are worked out once per block
//!   (`crate::panel::TapRuns`): ResNet-18 17.6 -> 15.0 ms, ResNet-20
//!   0.85 -> 0.65 ms against the per-channel `crate::panel::gather`.
//! * **Microkernel.** [`MR`] = 6 rows by 2 sub-blocks (16 pixels): per
//!   step, two panel loads, one broadcast of each row's 4-weight word and
//!   12 `vpdpbusd` (384 MACs). 12 accumulators, 2 panel vectors and a
//!   broadcast fill 15 of the 16 registers the VEX encoding can name.
//! * **Epilogue.** Per row and 16 pixels: a halved row's sums doubled, its
//!   fixes (one more `vpdpbusd` per vector on the fix's panel step), then
//!   [`Requant::apply_run`] compiled with this kernel's features.
//!
//! The kernel body is compiled twice by `gemm_body!`, once per encoding
//! of `vpdpbusd` (VEX for AVX-VNNI, EVEX for AVX-512 VL + VNNI), and the
//! entry points pick the one the CPU has, VEX first. The panel (at most
//! [`PANEL_BYTES`]) is on the stack: the kernel crate never allocates.

use core::arch::x86_64::*;
use core::mem::MaybeUninit;

use crate::dispatch::{vnni_vex, Isa};
use crate::gemm::{check_conv, check_linear, padded_k, DecodedRows, Order, MAX_K};
use crate::panel::{
    block_pixels, build_rows_panel, for_each_block, put_outputs, Seg, StepTaps, PX_MAX,
};
use crate::{Conv2dGeom, Requant};

/// Rows of the microkernel.
pub const MR: usize = 6;

/// Pixels per microkernel call and per `emit`: two sub-blocks.
const PAIR: usize = 16;

/// Bytes of the stack panel: `MAX_K` weights of 16 pixels.
pub const PANEL_BYTES: usize = padded_k(MAX_K) * 16;

/// The stack panel.
#[repr(C, align(64))]
struct Panel([i8; PANEL_BYTES]);

/// Build the panel of group `grp` for the block of `cnt` pixels whose
/// runs are `segs`: `kp / 4` steps of every sub-block of 8 pixels up to
/// `16 * cnt.div_ceil(16)` pixels, bytes `x ^ 0x80` (see the module
/// documentation).
///
/// # Safety
/// AVX2 available; `panel` is valid for writes of
/// `16 * cnt.div_ceil(16) * kp` bytes; `x.len() == g.in_len()`,
/// `grp < g.groups`, `cnt <= PX_MAX`.
#[target_feature(enable = "avx2")]
unsafe fn build_panel(
    g: &Conv2dGeom,
    x: &[i8],
    grp: usize,
    segs: &[Seg],
    cnt: usize,
    panel: *mut i8,
) {
    let steps = padded_k(g.k()) / 4;
    let chunks = cnt.div_ceil(16);
    let flip = _mm_set1_epi8(i8::MIN);
    let mut taps = StepTaps::new(g, x, grp, segs, cnt);
    let mut t = [[0i8; PX_MAX]; 4];
    for kb in 0..steps {
        taps.next(&mut t);
        for ch in 0..chunks {
            // SAFETY: each `t` row has PX_MAX >= 16 * chunks bytes.
            let [a, b, c, d] = t
                .each_ref()
                .map(|r| unsafe { _mm_loadu_si128(r.as_ptr().add(16 * ch).cast()) });
            let (ab_lo, ab_hi) = (_mm_unpacklo_epi8(a, b), _mm_unpackhi_epi8(a, b));
            let (cd_lo, cd_hi) = (_mm_unpacklo_epi8(c, d), _mm_unpackhi_epi8(c, d));
            // Pixels 0-3, 4-7 (sub-block 2 ch) and 8-11, 12-15 (2 ch + 1).
            let v = [
                _mm_unpacklo_epi16(ab_lo, cd_lo),
                _mm_unpackhi_epi16(ab_lo, cd_lo),
                _mm_unpacklo_epi16(ab_hi, cd_hi),
                _mm_unpackhi_epi16(ab_hi, cd_hi),
            ];
            for (half, pair) in v.chunks_exact(2).enumerate() {
                let sb = 2 * ch + half;
                let dst = panel.wrapping_add((sb * steps + kb) * 32);
                // SAFETY: sub-block sb < 2 * chunks, step kb < steps: the
                // 32 bytes lie within 16 * chunks * kp bytes of the panel.
                unsafe {
                    _mm_storeu_si128(dst.cast(), _mm_xor_si128(pair[0], flip));
                    _mm_storeu_si128(dst.add(16).cast(), _mm_xor_si128(pair[1], flip));
                }
            }
        }
    }
}

/// Defines module `$m`: the kernel body (microkernel, epilogue, the conv
/// and linear drivers) compiled with `$features`, whose `vpdpbusd`
/// intrinsic is `$dot`. A macro rather than a generic: the intrinsic must
/// be inlined into code compiled with its own encoding's features.
macro_rules! gemm_body {
    ($m:ident, $features:literal, $dot:ident) => {
        mod $m {
            use super::*;

            /// `R` rows (weights at `wp`, `4 * steps` bytes each, sums
            /// starting at `init`) against one pair of sub-blocks of the
            /// panel (`steps` steps of 32 bytes at `pv`, the second
            /// sub-block `32 * steps` bytes on): the accumulators of 16
            /// pixels per row, before the fixes.
            ///
            /// # Safety
            /// The CPU has the function's features; `wp[i]` valid for
            /// reads of `4 * steps` bytes; `pv` of `64 * steps`
            /// initialized bytes.
            #[target_feature(enable = $features)]
            #[inline]
            unsafe fn tile<const R: usize>(
                wp: &[*const i8; R],
                init: &[i32; R],
                pv: *const i8,
                steps: usize,
            ) -> [[__m256i; 2]; R] {
                let mut acc: [[__m256i; 2]; R] = core::array::from_fn(|i| {
                    let c = _mm256_set1_epi32(init[i]);
                    [c, c]
                });
                let p1 = pv.wrapping_add(32 * steps);
                for kb in 0..steps {
                    // SAFETY: step kb of both sub-blocks and word kb of
                    // each row are in bounds (this function's contract).
                    unsafe {
                        let a = _mm256_loadu_si256(pv.add(32 * kb).cast());
                        let b = _mm256_loadu_si256(p1.add(32 * kb).cast());
                        for (acc, &w) in acc.iter_mut().zip(wp) {
                            let w = _mm256_set1_epi32(w.add(4 * kb).cast::<i32>().read_unaligned());
                            acc[0] = $dot(acc[0], a, w);
                            acc[1] = $dot(acc[1], b, w);
                        }
                    }
                }
                acc
            }

            /// Rows `r0 .. r1` of `d` (`r1 - r0 <= R`; rows past `r1`
            /// repeat the last one and are dropped) against the panel of
            /// `cnt` pixels; `emit(r, p, y, n)` gets row `r`'s
            /// requantized outputs of pixels `p .. p + n` of the block
            /// (`n <= 16`, in `y[..n]`).
            ///
            /// # Safety
            /// The CPU has the function's features; the panel at `panel`
            /// holds the initialized sub-blocks of `cnt` pixels (rounded
            /// up to 16) of `d.kp() / 4` steps; `r1 <= d.rows()`,
            /// `rq.len() >= r1`.
            #[target_feature(enable = $features)]
            unsafe fn rows<const R: usize>(
                d: &DecodedRows,
                r0: usize,
                r1: usize,
                panel: *const i8,
                cnt: usize,
                rq: &[Requant],
                emit: &mut impl FnMut(usize, usize, &[i8; PAIR], usize),
            ) {
                let steps = d.kp() / 4;
                let last = |i: usize| (r0 + i).min(r1 - 1);
                let wp: [*const i8; R] = core::array::from_fn(|i| d.row(last(i)).as_ptr());
                let init: [i32; R] = core::array::from_fn(|i| d.corr(last(i)));
                for pair in 0..cnt.div_ceil(PAIR) {
                    let pv = panel.wrapping_add(pair * 64 * steps);
                    let n = (cnt - PAIR * pair).min(PAIR);
                    // SAFETY: rows of kp = 4 steps bytes; the pair's
                    // 64 * steps bytes are initialized (caller).
                    let mut acc = unsafe { tile::<R>(&wp, &init, pv, steps) };
                    for (i, acc) in acc.iter_mut().enumerate() {
                        let r = r0 + i;
                        if r >= r1 {
                            break;
                        }
                        // A halved row's sums doubled before its fixes go in.
                        let sh = _mm_cvtsi32_si128(d.shift(r) as i32);
                        acc[0] = _mm256_sll_epi32(acc[0], sh);
                        acc[1] = _mm256_sll_epi32(acc[1], sh);
                        for f in d.fixes(r) {
                            let fw = _mm256_set1_epi32(f.word);
                            // SAFETY: f.kb < steps (checked by
                            // DecodedRows::new): the step's 32 bytes of
                            // each sub-block are within the pair.
                            unsafe {
                                let p = pv.add(32 * f.kb as usize);
                                acc[0] = $dot(acc[0], _mm256_loadu_si256(p.cast()), fw);
                                let p = p.add(32 * steps);
                                acc[1] = $dot(acc[1], _mm256_loadu_si256(p.cast()), fw);
                            }
                        }
                        let mut t = [0i32; PAIR];
                        // SAFETY: `t` is 16 i32 lanes.
                        unsafe {
                            _mm256_storeu_si256(t.as_mut_ptr().cast(), acc[0]);
                            _mm256_storeu_si256(t.as_mut_ptr().add(8).cast(), acc[1]);
                        }
                        let mut y = [0i8; PAIR];
                        rq[r].apply_run(&t[..n], &mut y[..n]);
                        emit(r, PAIR * pair, &y, n);
                    }
                }
            }

            /// [`rows`] over rows `r .. r_end`, `MR` at a time (a tail of
            /// up to 3 rows takes the 3-row kernel).
            ///
            /// # Safety
            /// As [`rows`], with `r_end` for `r1`.
            #[target_feature(enable = $features)]
            unsafe fn all_rows(
                d: &DecodedRows,
                r: usize,
                r_end: usize,
                panel: *const i8,
                cnt: usize,
                rq: &[Requant],
                emit: &mut impl FnMut(usize, usize, &[i8; PAIR], usize),
            ) {
                let mut rb = r;
                while rb < r_end {
                    let re = r_end.min(rb + MR);
                    // SAFETY: forwarded (caller).
                    unsafe {
                        if re - rb <= 3 {
                            rows::<3>(d, rb, re, panel, cnt, rq, emit);
                        } else {
                            rows::<MR>(d, rb, re, panel, cnt, rq, emit);
                        }
                    }
                    rb = re;
                }
            }

            /// # Safety
            /// The CPU has the function's features; arguments checked by
            /// [`super::conv_gemm_i8`].
            #[target_feature(enable = $features)]
            pub(super) unsafe fn conv(
                g: &Conv2dGeom,
                x: &[i8],
                d: &DecodedRows,
                oc0: usize,
                rq: &[Requant],
                out: &mut [i8],
            ) {
                let (n, plane) = (d.rows(), g.out_plane());
                if n == 0 || plane == 0 {
                    return;
                }
                let px = block_pixels(PANEL_BYTES, d.kp());
                let mut panel = MaybeUninit::<Panel>::uninit();
                let pp = panel.as_mut_ptr().cast::<i8>();
                for_each_block(g, n, oc0, px, |grp, r, r_end, q0, cnt, segs| {
                    // SAFETY: 16 * cnt.div_ceil(16) * kp <= px * kp <=
                    // PANEL_BYTES by the choice of px; AVX2 is part of this
                    // level; the panel is written before it is read.
                    unsafe { build_panel(g, x, grp, segs, cnt, pp) };
                    let mut emit = |r: usize, p: usize, y: &[i8; PAIR], n: usize| {
                        put_outputs(out, r * plane + q0 + p, y, n)
                    };
                    // SAFETY: the block's panel is built; rows and outputs
                    // are within d, rq and out (checked by the caller).
                    unsafe { all_rows(d, r, r_end, pp, cnt, rq, &mut emit) };
                });
            }

            /// # Safety
            /// The CPU has the function's features; arguments checked by
            /// [`super::linear_gemm_i8`].
            #[target_feature(enable = $features)]
            pub(super) unsafe fn linear(
                x: &[i8],
                m: usize,
                d: &DecodedRows,
                rq: &[Requant],
                out: &mut [i8],
            ) {
                let (n, k) = (d.rows(), d.k());
                if n == 0 || m == 0 {
                    return;
                }
                let px = block_pixels(PANEL_BYTES, d.kp());
                let mut panel = MaybeUninit::<Panel>::uninit();
                let pp = panel.as_mut_ptr().cast::<i8>();
                let mut j0 = 0;
                while j0 < m {
                    let cnt = (m - j0).min(px);
                    let mut emit = |r: usize, p: usize, y: &[i8; PAIR], len: usize| {
                        for (j, &v) in y[..len].iter().enumerate() {
                            out[(j0 + p + j) * n + r] = v;
                        }
                    };
                    // SAFETY: 16 * cnt.div_ceil(16) * kp <= px * kp <=
                    // PANEL_BYTES; the panel is written before it is read;
                    // x holds m rows of k.
                    unsafe {
                        build_rows_panel(x, k, j0, cnt, 0x80, pp);
                        all_rows(d, 0, n, pp, cnt, rq, &mut emit);
                    }
                    j0 += cnt;
                }
            }
        }
    };
}

gemm_body!(vex, "avx2,fma,avxvnni", _mm256_dpbusd_avx_epi32);
gemm_body!(
    evex,
    "avx2,fma,avx512f,avx512vl,avx512vnni",
    _mm256_dpbusd_epi32
);

/// `avxvnni/gemm-dot`: equal to [`crate::scalar::conv_shift_i8`] on the
/// codes `d` was decoded from ([`crate::gemm::decode`]), and so to
/// [`crate::gemm::conv_decoded_i8`]. Panics if the CPU lacks the
/// AVX-VNNI level, on mismatched arguments, or if `k` exceeds [`MAX_K`].
pub fn conv_gemm_i8(
    g: &Conv2dGeom,
    x: &[i8],
    d: &DecodedRows,
    oc0: usize,
    rq: &[Requant],
    out: &mut [i8],
) {
    assert!(
        Isa::AvxVnni.available(),
        "avxvnni/gemm-dot on a CPU without AVX-VNNI or AVX-512 VNNI"
    );
    check_conv("avxvnni/gemm-dot", g, x.len(), d, oc0, rq.len(), out.len());
    assert_eq!(
        d.order(),
        Order::Codes,
        "avxvnni/gemm-dot: rows in code order"
    );
    // SAFETY: the level is available (checked above): AVX-VNNI, or else
    // AVX-512 VL + VNNI; the arguments match the geometry.
    unsafe {
        if vnni_vex() {
            vex::conv(g, x, d, oc0, rq, out)
        } else {
            evex::conv(g, x, d, oc0, rq, out)
        }
    }
}

/// `avxvnni/gemm-dot` for a linear layer over a batch, the contract of
/// [`crate::x86_64::gemm::linear_gemm_i8`]: `x` holds `m` rows of `k`
/// int8 inputs, `out` `m` rows of `n = d.rows()` outputs, each row equal
/// to [`crate::scalar::conv_shift_i8`] on the codes `d` was decoded from.
/// The batch runs along the lanes. Panics if the CPU lacks the AVX-VNNI
/// level, on mismatched lengths, or if `k` is 0 or exceeds [`MAX_K`].
pub fn linear_gemm_i8(x: &[i8], m: usize, d: &DecodedRows, rq: &[Requant], out: &mut [i8]) {
    assert!(
        Isa::AvxVnni.available(),
        "avxvnni/gemm-dot on a CPU without AVX-VNNI or AVX-512 VNNI"
    );
    check_linear("avxvnni/gemm-dot", x.len(), m, d, rq.len(), out.len());
    // SAFETY: the level is available (checked above); lengths checked.
    unsafe {
        if vnni_vex() {
            vex::linear(x, m, d, rq, out)
        } else {
            evex::linear(x, m, d, rq, out)
        }
    }
}
