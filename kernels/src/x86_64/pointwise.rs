//! `avx2/pw-dot`, `avxvnni/pw-dot`, `avx512/pw-dot`: the pointwise kernel
//! of [`crate::pointwise`] (and `*/px-dot`, its small-`k` variant).
//!
//! Per block of `PX` output pixels the input channels are interleaved in
//! pairs as `i16` (`vpunpcklbw` + `vpmovsxbw`: pixel `j`'s lane holds
//! `(x[2t][j], x[2t+1][j])`), once for all rows. Each row pair then runs
//! over the channel pairs: one broadcast of the row's two weights (an
//! `i32` from `crate::pointwise::weight_pairs`) and, per 8 pixels, one
//! `vpmaddwd` + `vpaddd`: 2 instructions per 16 MACs, no padding of `k`,
//! no gather, no horizontal sums. Exact: `|w * x| <= 2^14`, pairs and sums
//! in `i32`. At the AVX-VNNI and AVX-512 levels `vpdpwssd` fuses the two: one
//! instruction per 16 MACs (on `ymm`: Zen4 runs `zmm` as two halves, so
//! the wider form would only save decode bandwidth this loop does not
//! lack).

use core::arch::x86_64::*;

use crate::dispatch::{check_call, Isa};
use crate::pointwise::{applies, small_k, weight_pairs, MAX_K};
use crate::{Conv2dGeom, PackedRows, Requant};

/// Output pixels per block: four vectors of 8 `i32` per row.
const PX: usize = 32;
/// Entries of the stack weight-pair table (16 KB): rows per block is
/// `WT / ceil(k / 2)`, at least 16 at [`MAX_K`].
const WT: usize = 4096;

#[repr(C, align(32))]
struct PackBuf([i16; MAX_K * PX]);

/// Interleave input channels `2t, 2t + 1` of pixels `q .. q + PX` (zero
/// past the plane or past channel `k - 1`) into `pk[t * 2 * PX ..]`: four
/// vectors of 8 pixels' `(x_even, x_odd)` pairs.
///
/// # Safety
/// AVX2 available.
#[target_feature(enable = "avx2")]
unsafe fn pack(x: &[i8], k: usize, plane: usize, q: usize, pk: &mut [i16]) {
    let n = PX.min(plane - q);
    let chan = |c: usize| -> [i8; PX] {
        let mut v = [0i8; PX];
        if c < k {
            v[..n].copy_from_slice(&x[c * plane + q..c * plane + q + n]);
        }
        v
    };
    for t in 0..k.div_ceil(2) {
        let (a, b) = (chan(2 * t), chan(2 * t + 1));
        let dst = &mut pk[t * 2 * PX..(t + 1) * 2 * PX];
        for h in 0..2 {
            // SAFETY: `a`, `b` hold 32 bytes, `dst` 64 i16 (128 bytes):
            // every access below is in bounds; AVX2 is available.
            unsafe {
                let va = _mm_loadu_si128(a.as_ptr().add(16 * h).cast());
                let vb = _mm_loadu_si128(b.as_ptr().add(16 * h).cast());
                let lo = _mm256_cvtepi8_epi16(_mm_unpacklo_epi8(va, vb));
                let hi = _mm256_cvtepi8_epi16(_mm_unpackhi_epi8(va, vb));
                _mm256_storeu_si256(dst.as_mut_ptr().add(32 * h).cast(), lo);
                _mm256_storeu_si256(dst.as_mut_ptr().add(32 * h + 16).cast(), hi);
            }
        }
    }
}

/// [`pack`] for a general conv (the stem, small `k`): tap pairs of the
/// `(ic, ky, kx)` order, gathered per output pixel. `offs[t]` is tap `t`'s
/// input offset from an interior pixel's top-left input element.
fn pack_taps(g: &Conv2dGeom, x: &[i8], offs: &[u32], q: usize, pk: &mut [i16]) {
    let k = g.k();
    pk[..k.div_ceil(2) * 2 * PX].fill(0);
    let (ow, plane) = (g.out_w(), g.out_plane());
    let (kh, kw) = (g.kh, g.kw);
    let (s0, s1, d0, d1) = (g.stride[0], g.stride[1], g.dilation[0], g.dilation[1]);
    for j in 0..PX.min(plane - q) {
        let (oy, ox) = ((q + j) / ow, (q + j) % ow);
        let iy0 = (oy * s0) as isize - g.pads[0] as isize;
        let ix0 = (ox * s1) as isize - g.pads[1] as isize;
        let at = |t: usize| (t >> 1) * 2 * PX + 2 * j + (t & 1);
        if iy0 >= 0
            && ix0 >= 0
            && iy0 as usize + (kh - 1) * d0 < g.h
            && ix0 as usize + (kw - 1) * d1 < g.w
        {
            let base = iy0 as usize * g.w + ix0 as usize;
            for (t, &o) in offs[..k].iter().enumerate() {
                pk[at(t)] = x[base + o as usize] as i16;
            }
        } else {
            for t in 0..k {
                let (ic, ky, kx) = (t / (kh * kw), t / kw % kh, t % kw);
                let iy = iy0 + (ky * d0) as isize;
                let ix = ix0 + (kx * d1) as isize;
                if iy >= 0 && ix >= 0 && (iy as usize) < g.h && (ix as usize) < g.w {
                    pk[at(t)] = x[(ic * g.h + iy as usize) * g.w + ix as usize] as i16;
                }
            }
        }
    }
}

/// Sums of `R` rows (weight pairs `wt[r * kp ..]`) over the packed block;
/// `madd(acc, x, w)` adds the pair products of one vector. Inlined into
/// the per-ISA wrappers below, which compile it with their features.
///
/// # Safety
/// AVX2 available.
#[inline(always)]
unsafe fn rows_with<const R: usize>(
    wt: &[u32],
    kp: usize,
    pk: &[i16],
    madd: impl Fn(__m256i, __m256i, __m256i) -> __m256i,
) -> [[i32; PX]; R] {
    assert!(wt.len() >= R * kp && pk.len() >= kp * 2 * PX);
    // SAFETY: AVX2 available (this function's contract), here and below.
    let zero = unsafe { _mm256_setzero_si256() };
    let mut acc = [[zero; 4]; R];
    for t in 0..kp {
        let mut xv = [zero; 4];
        for (v, x) in xv.iter_mut().enumerate() {
            // SAFETY: `(t * 2 * PX + 16 * v) + 16 <= kp * 2 * PX` i16
            // (asserted above).
            *x = unsafe { _mm256_loadu_si256(pk.as_ptr().add(t * 2 * PX + 16 * v).cast()) };
        }
        for (r, a) in acc.iter_mut().enumerate() {
            // SAFETY: as above.
            let w = unsafe { _mm256_set1_epi32(wt[r * kp + t] as i32) };
            for (av, &x) in a.iter_mut().zip(&xv) {
                *av = madd(*av, x, w);
            }
        }
    }
    let mut out = [[0i32; PX]; R];
    for (o, a) in out.iter_mut().zip(&acc) {
        for (v, &av) in a.iter().enumerate() {
            // SAFETY: `o` has room for 8 i32 at `8 * v` (v < 4); AVX as
            // above.
            unsafe { _mm256_storeu_si256(o.as_mut_ptr().add(8 * v).cast(), av) };
        }
    }
    out
}

/// [`rows_with`] by `vpmaddwd` + `vpaddd` (AVX2).
///
/// # Safety
/// AVX2 available.
#[target_feature(enable = "avx2")]
unsafe fn rows<const R: usize>(wt: &[u32], kp: usize, pk: &[i16]) -> [[i32; PX]; R] {
    // SAFETY: AVX2 available (this function's contract).
    unsafe {
        rows_with::<R>(wt, kp, pk, |a, x, w| {
            _mm256_add_epi32(a, _mm256_madd_epi16(x, w))
        })
    }
}

/// [`rows_with`] by `vpdpwssd` (AVX-512 VNNI on `ymm`).
///
/// # Safety
/// AVX-512 VL and VNNI available.
#[target_feature(enable = "avx2,avx512f,avx512vl,avx512vnni")]
unsafe fn rows_vnni<const R: usize>(wt: &[u32], kp: usize, pk: &[i16]) -> [[i32; PX]; R] {
    // SAFETY: AVX-512 VL/VNNI, hence AVX2, available (this function's
    // contract).
    unsafe { rows_with::<R>(wt, kp, pk, |a, x, w| _mm256_dpwssd_epi32(a, x, w)) }
}

/// [`rows_with`] by `vpdpwssd` in its VEX encoding (AVX-VNNI).
///
/// # Safety
/// AVX2 and AVX-VNNI available.
#[target_feature(enable = "avx2,avxvnni")]
unsafe fn rows_vex<const R: usize>(wt: &[u32], kp: usize, pk: &[i16]) -> [[i32; PX]; R] {
    // SAFETY: AVX2 available (this function's contract).
    unsafe { rows_with::<R>(wt, kp, pk, |a, x, w| _mm256_dpwssd_avx_epi32(a, x, w)) }
}

/// Sums of `R` rows with the instructions of level `isa`; at
/// [`Isa::AvxVnni`], the encoding of `vpdpwssd` the CPU has.
///
/// # Safety
/// `isa` (AVX2, AVX-VNNI or AVX-512) available; as [`rows`].
#[inline(always)]
unsafe fn rows_at<const R: usize>(isa: Isa, wt: &[u32], kp: usize, pk: &[i16]) -> [[i32; PX]; R] {
    // SAFETY (all three): forwarded from this function's contract; the
    // AVX-VNNI level has one of the two encodings of `vpdpwssd`, and
    // AVX-512 the EVEX one.
    match isa {
        Isa::AvxVnni if crate::dispatch::vnni_vex() => unsafe { rows_vex::<R>(wt, kp, pk) },
        Isa::AvxVnni | Isa::Avx512 => unsafe { rows_vnni::<R>(wt, kp, pk) },
        _ => unsafe { rows::<R>(wt, kp, pk) },
    }
}

/// The kernel body.
///
/// # Safety
/// `isa` (AVX2, AVX-VNNI or AVX-512) available; arguments checked by
/// [`entry`].
#[target_feature(enable = "avx2")]
unsafe fn conv(isa: Isa, g: &Conv2dGeom, x: &[i8], w: &PackedRows, rq: &[Requant], out: &mut [i8]) {
    let (k, n, plane) = (g.k(), w.rows(), g.out_plane());
    let kp = k.div_ceil(2);
    let pointwise = applies(g);
    // Input offset of each tap from an interior pixel's first input.
    let mut offs = [0u32; MAX_K];
    if !pointwise {
        for (t, o) in offs[..k].iter_mut().enumerate() {
            let (ic, ky, kx) = (t / (g.kh * g.kw), t / g.kw % g.kh, t % g.kw);
            *o = ((ic * g.h + ky * g.dilation[0]) * g.w + kx * g.dilation[1]) as u32;
        }
    }
    let mut pk = PackBuf([0; MAX_K * PX]);
    let mut wt = [0u32; WT];
    // Rows per block of the weight table (even, so row pairs never split;
    // at least 16 since kp <= MAX_K / 2).
    let rb = WT / kp / 2 * 2;
    let mut r0 = 0;
    while r0 < n {
        let nr = rb.min(n - r0);
        weight_pairs(w, r0, &mut wt[..nr * kp]);
        let mut q = 0;
        while q < plane {
            let valid = PX.min(plane - q);
            if pointwise {
                // SAFETY: AVX2 available (this function's contract).
                unsafe { pack(x, k, plane, q, &mut pk.0) };
            } else {
                pack_taps(g, x, &offs, q, &mut pk.0);
            }
            let mut r = 0;
            while r < nr {
                let (sums, m) = if nr - r >= 2 {
                    // SAFETY: `isa` available; `wt` holds rows `r, r + 1`
                    // of the block.
                    let s = unsafe { rows_at::<2>(isa, &wt[r * kp..(r + 2) * kp], kp, &pk.0) };
                    (s, 2)
                } else {
                    // SAFETY: as above, one row.
                    let [s] = unsafe { rows_at::<1>(isa, &wt[r * kp..(r + 1) * kp], kp, &pk.0) };
                    ([s, [0; PX]], 1)
                };
                for (i, s) in sums.iter().take(m).enumerate() {
                    let row = r0 + r + i;
                    rq[row].apply_run(&s[..valid], &mut out[row * plane + q..][..valid]);
                }
                r += m;
            }
            q += PX;
        }
        r0 += nr;
    }
}

/// `avx2/pw-dot`: equal to [`crate::scalar::conv_shift_i8`] on pointwise
/// layers ([`crate::pointwise::applies`]). Panics if the CPU lacks AVX2 or
/// the layer is not pointwise.
pub fn conv_dot_i8(
    g: &Conv2dGeom,
    x: &[i8],
    w: &PackedRows,
    oc0: usize,
    rq: &[Requant],
    out: &mut [i8],
) {
    assert!(applies(g), "avx2/pw-dot: not a pointwise layer");
    entry(Isa::Avx2, g, x, w, oc0, rq, out)
}

/// `avx2/px-dot`: equal to [`crate::scalar::conv_shift_i8`] on the dense
/// small-`k` convs of [`crate::pointwise::small_k`] (a stem). Panics if
/// the CPU lacks AVX2 or the layer does not qualify.
pub fn conv_small_k_i8(
    g: &Conv2dGeom,
    x: &[i8],
    w: &PackedRows,
    oc0: usize,
    rq: &[Requant],
    out: &mut [i8],
) {
    assert!(small_k(g), "avx2/px-dot: not a small-k dense conv");
    entry(Isa::Avx2, g, x, w, oc0, rq, out)
}

/// `avx512/pw-dot`: [`conv_dot_i8`] with `vpdpwssd`. Panics if the CPU
/// lacks the AVX-512 level or the layer is not pointwise.
pub fn conv_dot_i8_vnni(
    g: &Conv2dGeom,
    x: &[i8],
    w: &PackedRows,
    oc0: usize,
    rq: &[Requant],
    out: &mut [i8],
) {
    assert!(applies(g), "avx512/pw-dot: not a pointwise layer");
    entry(Isa::Avx512, g, x, w, oc0, rq, out)
}

/// `avx512/px-dot`: [`conv_small_k_i8`] with `vpdpwssd`. Panics if the
/// CPU lacks the AVX-512 level or the layer does not qualify.
pub fn conv_small_k_i8_vnni(
    g: &Conv2dGeom,
    x: &[i8],
    w: &PackedRows,
    oc0: usize,
    rq: &[Requant],
    out: &mut [i8],
) {
    assert!(small_k(g), "avx512/px-dot: not a small-k dense conv");
    entry(Isa::Avx512, g, x, w, oc0, rq, out)
}

/// `avxvnni/pw-dot`: [`conv_dot_i8`] with `vpdpwssd` (AVX-VNNI, or
/// AVX-512 VL + VNNI). Panics if the CPU lacks the AVX-VNNI level or the
/// layer is not pointwise.
pub fn conv_dot_i8_avxvnni(
    g: &Conv2dGeom,
    x: &[i8],
    w: &PackedRows,
    oc0: usize,
    rq: &[Requant],
    out: &mut [i8],
) {
    assert!(applies(g), "avxvnni/pw-dot: not a pointwise layer");
    entry(Isa::AvxVnni, g, x, w, oc0, rq, out)
}

/// `avxvnni/px-dot`: [`conv_small_k_i8`] with `vpdpwssd`. Panics if the
/// CPU lacks the AVX-VNNI level or the layer does not qualify.
pub fn conv_small_k_i8_avxvnni(
    g: &Conv2dGeom,
    x: &[i8],
    w: &PackedRows,
    oc0: usize,
    rq: &[Requant],
    out: &mut [i8],
) {
    assert!(small_k(g), "avxvnni/px-dot: not a small-k dense conv");
    entry(Isa::AvxVnni, g, x, w, oc0, rq, out)
}

/// The checks every entry point shares, then the kernel.
fn entry(
    isa: Isa,
    g: &Conv2dGeom,
    x: &[i8],
    w: &PackedRows,
    oc0: usize,
    rq: &[Requant],
    out: &mut [i8],
) {
    assert!(
        isa.available(),
        "{} pixel-lane kernel on a CPU without that level",
        isa.name()
    );
    check_call(g, x.len(), w.k(), w.rows(), oc0, rq.len(), out.len());
    // SAFETY: `isa` (AVX2, AVX-VNNI or AVX-512, which include AVX2) is available
    // and the arguments were checked above (the layer qualifies: the
    // callers asserted it).
    unsafe { conv(isa, g, x, w, rq, out) }
}
