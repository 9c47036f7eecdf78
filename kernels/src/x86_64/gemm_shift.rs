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
//!
//! A batched linear layer ([`linear_gemm_shift_i8`]) is the 1x1 conv of
//! its batch: the batch rows take the place of pixels in the panel's
//! lanes (gathered from the `[m][k]` input), and the same rows run over
//! it.

use core::arch::x86_64::*;
use core::mem::MaybeUninit;

use super::gemm::{
    batch_lanes, for_blocks, requant16, row_offsets, tap, Block, Panel, PANEL_BYTES,
};
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

/// One block of `cnt <= 64` pixels (or batch rows): `build(WIDE)` writes
/// the panel at `pp` in the layout [`WIDE_K`] picks for `l.k()`, then
/// rows `r0 .. r1` run over it, on one half of 32 lanes or both.
///
/// # Safety
/// AVX-512 F/BW/VL available; `pp` is 64-byte aligned and valid for
/// writes of `l.k() * 128` bytes; `build` initializes the first
/// `cnt.div_ceil(32) * 32` lanes of every weight, as [`build_panel`] lays
/// them out.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn block(
    l: &ExpLists,
    r0: usize,
    r1: usize,
    pp: *mut u8,
    cnt: usize,
    rq: &[Requant],
    build: impl FnOnce(bool),
    emit: &mut impl FnMut(usize, &[i8]),
) {
    let wide = l.k() <= WIDE_K;
    build(wide);
    // SAFETY: the panel is written (above, the caller's contract).
    unsafe {
        match (wide, cnt > 32) {
            (true, true) => rows::<2, true>(l, r0, r1, pp, cnt, rq, emit),
            (true, false) => rows::<1, true>(l, r0, r1, pp, cnt, rq, emit),
            (false, true) => rows::<2, false>(l, r0, r1, pp, cnt, rq, emit),
            (false, false) => rows::<1, false>(l, r0, r1, pp, cnt, rq, emit),
        }
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
    debug_assert!(k * 128 <= PANEL_BYTES || k > WIDE_K);
    debug_assert!(k * 64 <= PANEL_BYTES);
    let mut panel = MaybeUninit::<Panel>::uninit();
    let pp = panel.as_mut_ptr().cast::<u8>();
    for_blocks(g, n, oc0, 64, |grp, r, r_end, q0, blk| {
        let cnt = blk.pixels();
        let mut emit = |r: usize, y: &[i8]| out[r * plane + q0..][..cnt].copy_from_slice(y);
        // SAFETY: k * 64 <= PANEL_BYTES (k <= MAX_K; k * 128 for the i16
        // panel of k <= WIDE_K); `build_panel` writes all 64 lanes of
        // every weight (zero past the block).
        unsafe {
            block(
                l,
                r,
                r_end,
                pp,
                cnt,
                rq,
                |wide| {
                    if wide {
                        build_panel::<true>(g, x, grp, blk, pp)
                    } else {
                        build_panel::<false>(g, x, grp, blk, pp)
                    }
                },
                &mut emit,
            )
        };
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

/// `vpermb` indices turning a gathered step weight-major: a gather puts
/// lane `l`'s four weights in bytes `4 l .. 4 l + 4`; byte `16 j + l`
/// takes weight `j` of lane `l`, so 128-bit lane `j` holds weight `j` of
/// the 16 rows.
const BY_WEIGHT: [u8; 64] = {
    let mut t = [0u8; 64];
    let mut i = 0;
    while i < 64 {
        t[i] = (4 * (i % 16) + i / 16) as u8;
        i += 1;
    }
    t
};

/// Store weights `i0 .. i0 + nw` (`nw <= 4`; 128-bit lane `j` of `t` holds
/// weight `i0 + j` of 16 rows) as lanes `16 v .. 16 v + 16` of the panel,
/// in the layout of [`build_panel`].
///
/// # Safety
/// AVX-512 F/BW available; weights `i0 .. i0 + nw` lie within the panel
/// at `panel`.
#[target_feature(enable = "avx512f,avx512bw")]
#[inline]
unsafe fn store_weights<const WIDE: bool>(
    panel: *mut u8,
    i0: usize,
    nw: usize,
    v: usize,
    t: __m512i,
) {
    let q = [
        _mm512_extracti32x4_epi32::<0>(t),
        _mm512_extracti32x4_epi32::<1>(t),
        _mm512_extracti32x4_epi32::<2>(t),
        _mm512_extracti32x4_epi32::<3>(t),
    ];
    for (j, &q) in q.iter().enumerate().take(nw) {
        // SAFETY: lanes 16 v .. 16 v + 16 of weight i0 + j, within the
        // panel (the caller).
        unsafe {
            if WIDE {
                let p = panel.add((i0 + j) * 128 + 32 * v);
                _mm256_storeu_si256(p.cast(), _mm256_cvtepi8_epi16(q));
            } else {
                _mm_storeu_si128(panel.add((i0 + j) * 64 + 16 * v).cast(), q);
            }
        }
    }
}

/// Build the panel of batch rows `j0 .. j0 + cnt` of `x` (`[m][k]`, a
/// linear layer's input) in the layout of [`build_panel`], batch rows in
/// the place of pixels (zero past `cnt`), for the first `nv` vectors of
/// 16 lanes: four weights of 16 rows are one `vpgatherdd`, made
/// weight-major by one `vpermb` (built once per 64 rows and read by every
/// output, so the gather is a small share).
///
/// # Safety
/// AVX-512 F/BW/VBMI available; `panel` valid for writes of `k * 64`
/// bytes (`k * 128` with `WIDE`); `x.len() >= (j0 + cnt) * k`,
/// `cnt <= 16 * nv <= 64`, `16 * k < 2^31`.
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
unsafe fn build_rows_panel<const WIDE: bool>(
    x: &[i8],
    k: usize,
    j0: usize,
    cnt: usize,
    nv: usize,
    panel: *mut u8,
) {
    let full = k / 4;
    let offs = row_offsets(k);
    // SAFETY: BY_WEIGHT is 64 bytes.
    let perm = unsafe { _mm512_loadu_si512(BY_WEIGHT.as_ptr().cast()) };
    for v in 0..nv {
        let (valid, mask) = batch_lanes(cnt, v);
        // Row j0 + 16 v may be past the batch (no lane of it is read then).
        let base = x.as_ptr().wrapping_add((j0 + 16 * v) * k);
        for kb in 0..full {
            let idx = _mm512_add_epi32(offs, _mm512_set1_epi32(4 * kb as i32));
            // SAFETY: an enabled lane l reads the 4 bytes at row
            // j0 + 16 v + l < j0 + cnt, columns 4 kb .. 4 kb + 4 <= k.
            let w = unsafe {
                _mm512_mask_i32gather_epi32::<1>(_mm512_setzero_si512(), mask, idx, base.cast())
            };
            // SAFETY: weights 4 kb .. 4 kb + 4 < k lie within the panel.
            unsafe { store_weights::<WIDE>(panel, 4 * kb, 4, v, _mm512_permutexvar_epi8(perm, w)) };
        }
        if k > 4 * full {
            // The last k % 4 weights, laid out as a gather would.
            let mut t = [0i8; 64];
            for l in 0..valid {
                for c in 4 * full..k {
                    t[4 * l + c - 4 * full] = x[(j0 + 16 * v + l) * k + c];
                }
            }
            // SAFETY: `t` is 64 bytes; weights 4 full .. k lie within the
            // panel.
            unsafe {
                let w = _mm512_loadu_si512(t.as_ptr().cast());
                store_weights::<WIDE>(
                    panel,
                    4 * full,
                    k - 4 * full,
                    v,
                    _mm512_permutexvar_epi8(perm, w),
                );
            }
        }
    }
}

/// # Safety
/// AVX-512 F/BW/VL/VBMI available; arguments checked by
/// [`linear_gemm_shift_i8`].
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vbmi")]
unsafe fn linear(x: &[i8], m: usize, l: &ExpLists, rq: &[Requant], out: &mut [i8]) {
    let (n, k) = (l.rows(), l.k());
    if n == 0 || m == 0 {
        return;
    }
    let mut panel = MaybeUninit::<Panel>::uninit();
    let pp = panel.as_mut_ptr().cast::<u8>();
    let mut j0 = 0;
    while j0 < m {
        let cnt = (m - j0).min(64);
        // `rows` reads halves of 32 lanes: build the vectors they cover.
        let nv = 2 * cnt.div_ceil(32);
        let mut emit = |r: usize, y: &[i8]| {
            for (j, &v) in y.iter().enumerate() {
                out[(j0 + j) * n + r] = v;
            }
        };
        // SAFETY: k * 64 <= PANEL_BYTES (k <= MAX_K; k * 128 for the i16
        // panel of k <= WIDE_K); x holds m rows of k, j0 + cnt <= m and
        // cnt <= 16 nv <= 64; the first nv * 16 >= cnt.div_ceil(32) * 32
        // lanes of every weight are written.
        unsafe {
            block(
                l,
                0,
                n,
                pp,
                cnt,
                rq,
                |wide| {
                    if wide {
                        build_rows_panel::<true>(x, k, j0, cnt, nv, pp)
                    } else {
                        build_rows_panel::<false>(x, k, j0, cnt, nv, pp)
                    }
                },
                &mut emit,
            )
        };
        j0 += cnt;
    }
}

/// `avx512/gemm-shift` for a linear layer over a batch, the contract of
/// [`super::gemm::linear_gemm_i8`] on exponent lists: `x` holds `m` rows
/// of `k` int8 inputs, `out` `m` rows of `n = l.rows()` outputs, each row
/// equal to [`crate::scalar::conv_shift_i8`] on the codes `l` was
/// regrouped from ([`crate::lists::decode`]); the batch runs along the
/// lanes, as the pixels of a conv do; no multiply. Panics if the CPU lacks
/// AVX-512 (F/BW/VL/VBMI), on mismatched lengths, or if `k` is 0 or
/// exceeds [`MAX_K`].
pub fn linear_gemm_shift_i8(x: &[i8], m: usize, l: &ExpLists, rq: &[Requant], out: &mut [i8]) {
    assert!(
        Isa::Avx512.available(),
        "avx512/gemm-shift on a CPU without AVX-512"
    );
    let name = "avx512/gemm-shift";
    crate::gemm::check_batch(
        name,
        x.len(),
        m,
        l.k(),
        l.rows(),
        MAX_K,
        rq.len(),
        out.len(),
    );
    // SAFETY: the level is available (checked above); lengths checked,
    // and 16 * k < 2^31 since k <= MAX_K.
    unsafe { linear(x, m, l, rq, out) }
}
