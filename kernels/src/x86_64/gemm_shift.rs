//! `avx512/gemm-shift`: the multiplication-free pixel-lane GEMM on
//! exponent lists ([`crate::lists`]).
//!
//! The blocks are those of `avx512/gemm-dot` ([`super::gemm`]); the panel
//! keeps each weight tap's 64 activations as plain signed bytes (64 bytes
//! per weight, so a layer's panel stays small enough to stream from L2
//! at the rate the adds consume it), sign-extended to `i16` on load
//! (`vpmovsxbw`): one `zmm` then holds 32 pixels of one weight tap. A row's sum is then, per (sign, exponent)
//! list, one `vpaddw` of a panel vector per weight, into two accumulators
//! that alternate (so the adds do not wait on each other); every 255
//! weights per accumulator and at the list's end, the `i16` sums widen to
//! `i32`, shift left by the exponent and add to (or subtract from) the
//! row's totals. No instruction multiplies; per weight and 32 pixels the
//! inner loop is one widening load and one add, plus a scalar index load
//! per weight.

use core::arch::x86_64::*;
use core::mem::MaybeUninit;

use super::gemm::{for_blocks, requant16, tap, Block, Panel, PANEL_BYTES};
use crate::dispatch::Isa;
use crate::lists::{ExpLists, MAX_K};
use crate::{Conv2dGeom, Requant};

/// Build the panel of group `grp`: per weight `i`, the block's 64
/// activations (raw int8, zero for padding), at `panel + i * 64` as bytes
/// or, with `WIDE`, sign-extended to `i16` at build time at
/// `panel + i * 128` (for small `k`, [`WIDE_K`]).
///
/// # Safety
/// AVX-512 F/BW/VBMI available; `panel` valid for writes of `k * 64`
/// bytes (`k * 128` with `WIDE`; 64-byte aligned); `x.len() == g.in_len()`.
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
unsafe fn build_panel<const WIDE: bool>(
    g: &Conv2dGeom,
    x: &[i8],
    grp: usize,
    blk: &Block,
    panel: *mut u8,
) {
    let c_base = grp * g.c_in_g();
    let mut i = 0;
    for ic in 0..g.c_in_g() {
        for ky in 0..g.kh {
            for kx in 0..g.kw {
                // SAFETY: c_base + ic < c_in; features forwarded; weight
                // i's 64 (128) bytes lie within the panel.
                unsafe {
                    let t = tap(g, x, blk, c_base + ic, ky, kx);
                    if WIDE {
                        let lo = _mm512_cvtepi8_epi16(_mm512_castsi512_si256(t));
                        let hi = _mm512_cvtepi8_epi16(_mm512_extracti64x4_epi64::<1>(t));
                        _mm512_store_si512(panel.add(i * 128).cast(), lo);
                        _mm512_store_si512(panel.add(i * 128 + 64).cast(), hi);
                    } else {
                        _mm512_store_si512(panel.add(i * 64).cast(), t);
                    }
                }
                i += 1;
            }
        }
    }
}

/// Layers with `k` up to this take the `i16` panel ([`build_panel`]):
/// it fits L1 (`k * 128` bytes), where the plain `vpaddw` from memory
/// beats widening on every load (stem 7x7, k = 147: 58 against 40 G MAC/s);
/// larger layers take the byte panel, which halves what streams from L2
/// (3x3 convs, k = 576-4608: 47 -> 66 G MAC/s).
const WIDE_K: usize = 192;

/// Weight `i`'s half `v` (32 pixels) as `i16`, from either panel.
///
/// # Safety
/// AVX-512 F/BW available; weight `i` lies within the panel.
#[target_feature(enable = "avx512f,avx512bw")]
#[inline]
unsafe fn load16<const WIDE: bool>(panel: *const u8, i: u16, v: usize) -> __m512i {
    // SAFETY: forwarded.
    unsafe {
        if WIDE {
            _mm512_load_si512(panel.add(i as usize * 128 + 64 * v).cast())
        } else {
            widen(panel.add(i as usize * 64 + 32 * v))
        }
    }
}

/// `tot += (sum << p)` or `-=`, for the `i16` sums of 32 pixels in `s`.
#[target_feature(enable = "avx512f,avx512bw")]
#[inline]
fn flush(tot: &mut [__m512i; 2], s: __m512i, p: u32, neg: bool) {
    let sh = _mm_cvtsi32_si128(p as i32);
    let lo = _mm512_sll_epi32(_mm512_cvtepi16_epi32(_mm512_castsi512_si256(s)), sh);
    let hi = _mm512_sll_epi32(_mm512_cvtepi16_epi32(_mm512_extracti64x4_epi64::<1>(s)), sh);
    if neg {
        tot[0] = _mm512_sub_epi32(tot[0], lo);
        tot[1] = _mm512_sub_epi32(tot[1], hi);
    } else {
        tot[0] = _mm512_add_epi32(tot[0], lo);
        tot[1] = _mm512_add_epi32(tot[1], hi);
    }
}

/// 32 activations at `p`, sign-extended to `i16` (`vpmovsxbw` from memory).
///
/// # Safety
/// AVX-512 F/BW available; 32 bytes readable at `p`.
#[target_feature(enable = "avx512f,avx512bw")]
#[inline]
unsafe fn widen(p: *const u8) -> __m512i {
    // SAFETY: forwarded.
    _mm512_cvtepi8_epi16(unsafe { _mm256_loadu_si256(p.cast()) })
}

/// Row `r`'s sums over the panel (the first `NV` halves of 32 of each
/// weight's 64 pixels; the `i16` panel if `WIDE`), as 16-lane `i32`
/// vectors: the inner loop, kept out of line so that
/// `scripts/check-no-mul.sh` finds it and checks it has no multiply.
///
/// # Safety
/// AVX-512 F/BW available; the panel holds `l.k()` initialized weights
/// at `panel` (64-byte aligned).
#[inline(never)]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn list_rows<const NV: usize, const WIDE: bool>(
    l: &ExpLists,
    r: usize,
    panel: *const u8,
) -> [[__m512i; 2]; NV] {
    // Per accumulator, 255 activations of magnitude <= 128 fit an i16.
    const RUN: usize = 2 * 255;
    let mut tot = [[_mm512_setzero_si512(); 2]; NV];
    for neg in [false, true] {
        for p in 0..l.exps() {
            for run in l.list(r, neg, p).chunks(RUN) {
                let mut a = [_mm512_setzero_si512(); NV];
                let mut b = [_mm512_setzero_si512(); NV];
                let pairs = run.chunks_exact(2);
                let last = pairs.remainder();
                for pair in pairs {
                    for v in 0..NV {
                        // SAFETY: indices are below k (ExpLists::new), so
                        // both weights lie within the panel.
                        unsafe {
                            a[v] = _mm512_add_epi16(a[v], load16::<WIDE>(panel, pair[0], v));
                            b[v] = _mm512_add_epi16(b[v], load16::<WIDE>(panel, pair[1], v));
                        }
                    }
                }
                if let [i] = last {
                    for (v, a) in a.iter_mut().enumerate() {
                        // SAFETY: as above.
                        unsafe { *a = _mm512_add_epi16(*a, load16::<WIDE>(panel, *i, v)) };
                    }
                }
                for v in 0..NV {
                    flush(&mut tot[v], a[v], p as u32, neg);
                    flush(&mut tot[v], b[v], p as u32, neg);
                }
            }
        }
    }
    tot
}

/// Rows `r0 .. r1` of `l` against the panel ([`list_rows`], `cnt`
/// pixels), requantized; `emit(r, y)` gets row `r`'s outputs.
///
/// # Safety
/// AVX-512 F/BW/VL available; the panel as for [`list_rows`].
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn rows<const NV: usize, const WIDE: bool>(
    l: &ExpLists,
    r0: usize,
    r1: usize,
    panel: *const u8,
    cnt: usize,
    rq: &[Requant],
    emit: &mut impl FnMut(usize, &[i8]),
) {
    for (r, rq) in rq.iter().enumerate().take(r1).skip(r0) {
        // SAFETY: forwarded.
        let tot = unsafe { list_rows::<NV, WIDE>(l, r, panel) };
        let mut y = [0i8; 64];
        let mut acc = [0i32; 64];
        let fast = rq.offset.unsigned_abs() < 1 << 62;
        for (v, t) in tot.iter().enumerate() {
            for (h, t) in t.iter().enumerate() {
                let at = 32 * v + 16 * h;
                if fast {
                    // SAFETY: y has 64 bytes; at + 16 <= 32 * NV <= 64.
                    unsafe { _mm_storeu_si128(y.as_mut_ptr().add(at).cast(), requant16(*t, rq)) };
                } else {
                    // SAFETY: acc has 64 lanes; at + 16 <= 64.
                    unsafe { _mm512_storeu_si512(acc.as_mut_ptr().add(at).cast(), *t) };
                }
            }
        }
        if !fast {
            rq.apply_run(&acc[..cnt], &mut y[..cnt]);
        }
        emit(r, &y[..cnt]);
    }
}

/// # Safety
/// AVX-512 F/BW/VL/VBMI available; arguments checked by
/// [`conv_gemm_shift_i8`].
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vbmi")]
unsafe fn conv(g: &Conv2dGeom, x: &[i8], l: &ExpLists, oc0: usize, rq: &[Requant], out: &mut [i8]) {
    let (n, plane, k) = (l.rows(), g.out_plane(), l.k());
    if n == 0 || plane == 0 {
        return;
    }
    debug_assert!(k * 64 <= PANEL_BYTES);
    let mut panel = MaybeUninit::<Panel>::uninit();
    let pp = panel.as_mut_ptr().cast::<u8>();
    for_blocks(g, n, oc0, 64, |grp, r, r_end, q0, blk| {
        let cnt = blk.pixels();
        let mut emit = |r: usize, y: &[i8]| out[r * plane + q0..][..cnt].copy_from_slice(y);
        // SAFETY: k * 64 <= PANEL_BYTES (k <= MAX_K); the panel is written
        // before `rows` reads it.
        unsafe {
            match (k <= WIDE_K, cnt > 32) {
                (true, wide) => {
                    build_panel::<true>(g, x, grp, blk, pp);
                    if wide {
                        rows::<2, true>(l, r, r_end, pp, cnt, rq, &mut emit);
                    } else {
                        rows::<1, true>(l, r, r_end, pp, cnt, rq, &mut emit);
                    }
                }
                (false, wide) => {
                    build_panel::<false>(g, x, grp, blk, pp);
                    if wide {
                        rows::<2, false>(l, r, r_end, pp, cnt, rq, &mut emit);
                    } else {
                        rows::<1, false>(l, r, r_end, pp, cnt, rq, &mut emit);
                    }
                }
            }
        }
    });
}

/// `avx512/gemm-shift`: equal to [`crate::scalar::conv_shift_i8`] on the
/// codes `l` was regrouped from ([`crate::lists::decode`]); no multiply.
/// Panics if the CPU lacks AVX-512 (F/BW/VL/VBMI), on mismatched
/// arguments, or if `k` exceeds [`MAX_K`].
pub fn conv_gemm_shift_i8(
    g: &Conv2dGeom,
    x: &[i8],
    l: &ExpLists,
    oc0: usize,
    rq: &[Requant],
    out: &mut [i8],
) {
    assert!(
        Isa::Avx512.available(),
        "avx512/gemm-shift on a CPU without AVX-512"
    );
    assert_eq!(l.k(), g.k(), "exponent lists: k");
    assert!(g.k() <= MAX_K, "avx512/gemm-shift: k above MAX_K");
    crate::dispatch::check_call(g, x.len(), l.k(), l.rows(), oc0, rq.len(), out.len());
    // SAFETY: the level is available (checked above) and the arguments
    // match the geometry.
    unsafe { conv(g, x, l, oc0, rq, out) }
}
