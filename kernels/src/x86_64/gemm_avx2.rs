//! `avx2/gemm-dot`: a pixel-lane int8 GEMM for CPUs with AVX2 but no int8
//! dot product, on the rows decoded at load ([`crate::gemm`]), with
//! `vpmaddwd` on 16-bit pairs.
//!
//! `vpmaddubsw` would multiply bytes as the VNNI kernels do, but its pair
//! sums saturate at 16 bits: `(x + 128) * w` over two weights of 128
//! reaches 65280. `vpmaddwd` takes both operands as `i16`, so neither the
//! `x + 128` offset nor the decoded rows' fixes and halving are needed:
//!
//! * **Weights.** For each block and group of [`MR`] rows the kernel
//!   widens the true weights ([`DecodedRows`]: stored weight shifted by
//!   the row's form, plus its fixes) to `i16` (`vpmovsxbw`, `vpsllw`, a
//!   scalar add per fix) into a stack table read as adjacent pairs: one
//!   broadcast `i32` per row and pair of weights. perf puts `widen` at 9%
//!   of ResNet-18 at `--isa avx2`, nearly all of it on the `vpmovsxbw`
//!   loads: the block's first read of the rows, which the other GEMMs pay
//!   in their inner loops instead.
//! * **Panel.** For a block of up to 64 output pixels, sub-blocks of 8
//!   pixels, `[pixels / 8][k / 2][8][2]` `i16`: a sub-block's pair of taps
//!   is one 32-byte vector. The taps are gathered into byte rows
//!   (`crate::panel::StepTaps`, four per call, two pairs), interleaved
//!   by `punpcklbw` and sign-extended by `vpmovsxbw`.
//! * **Microkernel.** [`MR`] = 4 rows by 2 sub-blocks (16 pixels): per
//!   pair of weights, two panel loads, four broadcasts, 8 `vpmaddwd` and
//!   8 `vpaddd` (256 MACs). Exact: `|x|, |w| <= 128`, so a pair sum is at
//!   most 32768 and the sums are `i32`.
//! * **Epilogue.** [`Requant::apply_run`] per row and 16 pixels.
//!
//! Layers up to [`MAX_K`] (ResNet's 4608): the panel holds 16-bit
//! activations and the weight table sits on the stack.

use core::arch::x86_64::*;
use core::mem::MaybeUninit;

use crate::dispatch::Isa;
use crate::gemm::{check_conv, check_linear, DecodedRows, Order};
use crate::panel::{block_pixels, for_each_block, put_outputs, Seg, StepTaps, PX_MAX};
use crate::{Conv2dGeom, Requant};

/// Rows of the microkernel.
pub const MR: usize = 4;

/// Largest `k` of this kernel (its panel and weight table are on the
/// stack).
pub const MAX_K: usize = 4608;

/// Pixels per microkernel call: two sub-blocks of 8.
const PAIR: usize = 16;

/// `k` rounded up to whole steps of four weights (the panel's unit).
const fn padded(k: usize) -> usize {
    crate::gemm::padded_k(k)
}

/// Bytes of the stack panel: 32 pixels of [`MAX_K`] `i16` activations.
const PANEL_BYTES: usize = padded(MAX_K) * 2 * 32;

/// The stack panel.
#[repr(C, align(64))]
struct Panel([i16; PANEL_BYTES / 2]);

/// True when `avx2/gemm-dot` runs layer `g`: the layers of the other
/// pixel-lane GEMMs ([`crate::gemm::applies`]) up to [`MAX_K`].
pub const fn applies(g: &Conv2dGeom) -> bool {
    crate::gemm::applies(g) && g.k() <= MAX_K
}

/// Widen rows `r0 .. r0 + R` of `d` (rows past `r1` repeat row `r1 - 1`)
/// to their true weights as `i16`: row `i`'s `kp` weights at
/// `wt[i * kp ..]`, stored weight shifted by the row's form plus its
/// fixes (zero past `k`).
///
/// # Safety
/// AVX2 available; `wt` valid for writes of `R * d.kp()` i16; `r0 < r1
/// <= d.rows()`.
#[target_feature(enable = "avx2")]
unsafe fn widen<const R: usize>(d: &DecodedRows, r0: usize, r1: usize, wt: *mut i16) {
    let kp = d.kp();
    for i in 0..R {
        let r = (r0 + i).min(r1 - 1);
        let (row, sh) = (d.row(r), _mm_cvtsi32_si128(d.shift(r) as i32));
        let dst = wt.wrapping_add(i * kp);
        let mut c = 0;
        while c + 16 <= kp {
            // SAFETY: bytes c .. c + 16 of the row, i16 c .. c + 16 of
            // row i of the table (contract).
            unsafe {
                let v = _mm256_cvtepi8_epi16(_mm_loadu_si128(row.as_ptr().add(c).cast()));
                _mm256_storeu_si256(dst.add(c).cast(), _mm256_sll_epi16(v, sh));
            }
            c += 16;
        }
        for (j, &v) in row.iter().enumerate().skip(c) {
            // SAFETY: j < kp (contract).
            unsafe { dst.add(j).write(((v as i32) << d.shift(r)) as i16) };
        }
        for f in d.fixes(r) {
            for (j, a) in f.word.to_le_bytes().into_iter().enumerate() {
                // SAFETY: f.kb < kp / 4 (checked by DecodedRows::new).
                unsafe { *dst.add(4 * f.kb as usize + j) += a as i8 as i16 };
            }
        }
    }
}

/// Build the panel of group `grp` for the block of `cnt` pixels whose runs
/// are `segs`: `kp / 2` pairs of every sub-block of 8 pixels up to
/// `16 * cnt.div_ceil(16)` pixels (see the module documentation).
///
/// # Safety
/// AVX2 available; `panel` valid for writes of `16 * cnt.div_ceil(16) *
/// kp` `i16`; `x.len() == g.in_len()`, `grp < g.groups`, `cnt <= PX_MAX`.
#[target_feature(enable = "avx2")]
unsafe fn build_panel(
    g: &Conv2dGeom,
    x: &[i8],
    grp: usize,
    segs: &[Seg],
    cnt: usize,
    panel: *mut i16,
) {
    let pairs = padded(g.k()) / 2;
    let chunks = cnt.div_ceil(16);
    let mut taps = StepTaps::new(g, x, grp, segs, cnt);
    let mut t = [[0i8; PX_MAX]; 4];
    for kb in 0..pairs / 2 {
        taps.next(&mut t);
        for (h, [a, b]) in [[0, 1], [2, 3]].into_iter().enumerate() {
            let kp2 = 2 * kb + h;
            for ch in 0..chunks {
                // SAFETY: each `t` row has PX_MAX >= 16 * chunks bytes.
                let (va, vb) = unsafe {
                    (
                        _mm_loadu_si128(t[a].as_ptr().add(16 * ch).cast()),
                        _mm_loadu_si128(t[b].as_ptr().add(16 * ch).cast()),
                    )
                };
                // Pixels 0-7 and 8-15: (a, b) byte pairs, then i16 pairs.
                let lo = _mm256_cvtepi8_epi16(_mm_unpacklo_epi8(va, vb));
                let hi = _mm256_cvtepi8_epi16(_mm_unpackhi_epi8(va, vb));
                for (s, v) in [lo, hi].into_iter().enumerate() {
                    let sb = 2 * ch + s;
                    let dst = panel.wrapping_add((sb * pairs + kp2) * 16);
                    // SAFETY: sub-block sb < 2 * chunks, pair kp2 < pairs:
                    // the 16 i16 lie within 16 * chunks * kp of the panel.
                    unsafe { _mm256_storeu_si256(dst.cast(), v) };
                }
            }
        }
    }
}

/// `R` rows (widened weights at `wt`, `2 * pairs` per row) against one
/// pair of sub-blocks of the panel (`pairs` vectors at `pv`, the second
/// sub-block `16 * pairs` i16 on): the sums of 16 pixels per row.
///
/// # Safety
/// AVX2 available; `wt` holds `R * 2 * pairs` initialized i16; `pv`
/// `32 * pairs` initialized i16.
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn tile<const R: usize>(wt: *const i16, pairs: usize, pv: *const i16) -> [[__m256i; 2]; R] {
    let mut acc = [[_mm256_setzero_si256(); 2]; R];
    let p1 = pv.wrapping_add(16 * pairs);
    for t in 0..pairs {
        // SAFETY: pair t of both sub-blocks is in bounds (contract).
        let (a, b) = unsafe {
            (
                _mm256_loadu_si256(pv.add(16 * t).cast()),
                _mm256_loadu_si256(p1.add(16 * t).cast()),
            )
        };
        for (i, acc) in acc.iter_mut().enumerate() {
            // SAFETY: pair t of row i of the table (contract).
            let w = unsafe { wt.add(2 * (i * pairs + t)).cast::<i32>().read_unaligned() };
            let w = _mm256_set1_epi32(w);
            acc[0] = _mm256_add_epi32(acc[0], _mm256_madd_epi16(a, w));
            acc[1] = _mm256_add_epi32(acc[1], _mm256_madd_epi16(b, w));
        }
    }
    acc
}

/// Rows `r0 .. r1` of `d` (`r1 - r0 <= R`) against the panel of `cnt`
/// pixels; `emit(r, p, y, n)` gets row `r`'s requantized outputs of
/// pixels `p .. p + n` of the block (`n <= 16`, in `y[..n]`).
///
/// # Safety
/// AVX2 available; the panel at `panel` holds the initialized sub-blocks
/// of `cnt` pixels (rounded up to 16) of `d.kp() / 2` pairs; `r1 <=
/// d.rows()`, `rq.len() >= r1`; `wt` the `R` rows widened by [`widen`].
#[target_feature(enable = "avx2")]
unsafe fn rows<const R: usize>(
    d: &DecodedRows,
    wt: *const i16,
    (r0, r1): (usize, usize),
    panel: *const i16,
    cnt: usize,
    rq: &[Requant],
    emit: &mut impl FnMut(usize, usize, &[i8; PAIR], usize),
) {
    let pairs = d.kp() / 2;
    for pair in 0..cnt.div_ceil(PAIR) {
        let pv = panel.wrapping_add(pair * 32 * pairs);
        let n = (cnt - PAIR * pair).min(PAIR);
        // SAFETY: the pair's 32 * pairs i16 are initialized (caller).
        let acc = unsafe { tile::<R>(wt, pairs, pv) };
        for (i, acc) in acc.iter().enumerate().take(r1 - r0) {
            let mut t = [0i32; PAIR];
            // SAFETY: `t` is 16 i32 lanes.
            unsafe {
                _mm256_storeu_si256(t.as_mut_ptr().cast(), acc[0]);
                _mm256_storeu_si256(t.as_mut_ptr().add(8).cast(), acc[1]);
            }
            let mut y = [0i8; PAIR];
            rq[r0 + i].apply_run(&t[..n], &mut y[..n]);
            emit(r0 + i, PAIR * pair, &y, n);
        }
    }
}

/// [`rows`] over rows `r .. r_end`, [`MR`] at a time, each group widened
/// first.
///
/// # Safety
/// As [`rows`], with `r_end` for `r1`; `d.kp() <= padded(MAX_K)`.
#[target_feature(enable = "avx2")]
unsafe fn all_rows(
    d: &DecodedRows,
    r: usize,
    r_end: usize,
    panel: *const i16,
    cnt: usize,
    rq: &[Requant],
    emit: &mut impl FnMut(usize, usize, &[i8; PAIR], usize),
) {
    let mut wt = MaybeUninit::<[i16; MR * padded(MAX_K)]>::uninit();
    let wp = wt.as_mut_ptr().cast::<i16>();
    let mut rb = r;
    while rb < r_end {
        let re = r_end.min(rb + MR);
        // SAFETY: MR * kp <= MR * padded(MAX_K) i16 (caller); the table's
        // rows are written before `rows` reads them.
        unsafe {
            widen::<MR>(d, rb, re, wp);
            rows::<MR>(d, wp, (rb, re), panel, cnt, rq, emit);
        }
        rb = re;
    }
}

/// # Safety
/// AVX2 available; arguments checked by [`conv_gemm_i8`].
#[target_feature(enable = "avx2")]
unsafe fn conv(
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
    let px = block_pixels(PANEL_BYTES / 2, d.kp());
    let mut panel = MaybeUninit::<Panel>::uninit();
    let pp = panel.as_mut_ptr().cast::<i16>();
    for_each_block(g, n, oc0, px, |grp, r, r_end, q0, cnt, segs| {
        // SAFETY: 16 * cnt.div_ceil(16) * kp i16 <= px * kp * 2 bytes <=
        // PANEL_BYTES by the choice of px; the panel is written before it
        // is read.
        unsafe { build_panel(g, x, grp, segs, cnt, pp) };
        let mut emit = |r: usize, p: usize, y: &[i8; PAIR], n: usize| {
            put_outputs(out, r * plane + q0 + p, y, n)
        };
        // SAFETY: the block's panel is built; rows and outputs are within
        // d, rq and out (checked by the caller).
        unsafe { all_rows(d, r, r_end, pp, cnt, rq, &mut emit) };
    });
}

/// `avx2/gemm-dot`: equal to [`crate::scalar::conv_shift_i8`] on the
/// codes `d` was decoded from ([`crate::gemm::decode`]). Panics if the CPU
/// lacks AVX2, on mismatched arguments, or if `k` exceeds [`MAX_K`].
pub fn conv_gemm_i8(
    g: &Conv2dGeom,
    x: &[i8],
    d: &DecodedRows,
    oc0: usize,
    rq: &[Requant],
    out: &mut [i8],
) {
    assert!(Isa::Avx2.available(), "avx2/gemm-dot on a CPU without AVX2");
    check_conv("avx2/gemm-dot", g, x.len(), d, oc0, rq.len(), out.len());
    assert!(g.k() <= MAX_K, "avx2/gemm-dot: k above {MAX_K}");
    assert_eq!(d.order(), Order::Codes, "avx2/gemm-dot: rows in code order");
    // SAFETY: AVX2 is available (checked above) and the arguments match
    // the geometry.
    unsafe { conv(g, x, d, oc0, rq, out) }
}

/// Build the panel of batch rows `j0 .. j0 + cnt` of `x` (`[m][k]`): the
/// conv panel's layout with batch rows for pixels (zero past `k` and past
/// `cnt` rows up to the next 16).
fn build_rows_panel(x: &[i8], k: usize, j0: usize, cnt: usize, panel: &mut [i16]) {
    let pairs = padded(k) / 2;
    for p in 0..16 * cnt.div_ceil(16) {
        let (sb, lane) = (p / 8, p % 8);
        for t in 0..pairs {
            let at = ((sb * pairs + t) * 8 + lane) * 2;
            let v = |i: usize| {
                if p < cnt && i < k {
                    x[(j0 + p) * k + i] as i16
                } else {
                    0
                }
            };
            panel[at] = v(2 * t);
            panel[at + 1] = v(2 * t + 1);
        }
    }
}

/// # Safety
/// AVX2 available; arguments checked by [`linear_gemm_i8`].
#[target_feature(enable = "avx2")]
unsafe fn linear(x: &[i8], m: usize, d: &DecodedRows, rq: &[Requant], out: &mut [i8]) {
    let (n, k) = (d.rows(), d.k());
    if n == 0 || m == 0 {
        return;
    }
    let px = block_pixels(PANEL_BYTES / 2, d.kp());
    let mut panel = MaybeUninit::<Panel>::uninit();
    let pp = panel.as_mut_ptr().cast::<i16>();
    let mut j0 = 0;
    while j0 < m {
        let cnt = (m - j0).min(px);
        let len = 16 * cnt.div_ceil(16) * d.kp();
        // SAFETY: `len` <= px * kp <= PANEL_BYTES / 2 i16 of the panel,
        // each written by `build_rows_panel` before it is read.
        let pv = unsafe {
            pp.write_bytes(0, len);
            core::slice::from_raw_parts_mut(pp, len)
        };
        build_rows_panel(x, k, j0, cnt, pv);
        let mut emit = |r: usize, p: usize, y: &[i8; PAIR], len: usize| {
            for (j, &v) in y[..len].iter().enumerate() {
                out[(j0 + p + j) * n + r] = v;
            }
        };
        // SAFETY: the panel is built; x holds m rows of k.
        unsafe { all_rows(d, 0, n, pp, cnt, rq, &mut emit) };
        j0 += cnt;
    }
}

/// `avx2/gemm-dot` for a linear layer over a batch, the contract of
/// [`crate::x86_64::gemm::linear_gemm_i8`]. Panics if the CPU lacks AVX2,
/// on mismatched lengths, or if `k` is 0 or exceeds [`MAX_K`].
pub fn linear_gemm_i8(x: &[i8], m: usize, d: &DecodedRows, rq: &[Requant], out: &mut [i8]) {
    assert!(Isa::Avx2.available(), "avx2/gemm-dot on a CPU without AVX2");
    check_linear("avx2/gemm-dot", x.len(), m, d, rq.len(), out.len());
    assert!(d.k() <= MAX_K, "avx2/gemm-dot: k above {MAX_K}");
    // SAFETY: AVX2 is available (checked above); lengths checked.
    unsafe { linear(x, m, d, rq, out) }
}
