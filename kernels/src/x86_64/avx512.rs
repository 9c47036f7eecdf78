//! AVX-512 kernels ([`Isa::Avx512`]: F, BW, VL, VBMI and VNNI, as on Ice
//! Lake, Sapphire Rapids and Zen4).
//!
//! 64 codes decode per `zmm` with no scalar work and no copy at a row's
//! end: a masked load reads only the bytes present (the rest are code 0,
//! weight +1, against the patch's zero padding); for B = 2 and 3 `vpermb`
//! gives each quadword the `B` bytes holding its 8 codes and
//! `vpmultishiftqb` pulls each code to its own byte; B = 4 is a nibble
//! split read against a patch that `prepare` split into even and odd
//! activations. Code bytes keep junk above their `B` bits: `dot` looks them
//! up in 64-entry `vpermb` tables that repeat every `2^B` entries, the
//! other families mask them. Signs live in mask registers.
//!
//! * `dot`: `|w|` from the table; when the chunk has no -128 (checked once
//!   per chunk by `prepare`) the sign goes on `x` by a masked subtract from
//!   zero (`-x` fits int8), otherwise the positive and the negative
//!   weights' `|w|` (two tables) go into two accumulators whose difference
//!   is the sum, exact for every `x`; then `vpdpbusd` (unsigned `|w|` times
//!   signed `x`, four products summed into each `i32` lane, no
//!   saturation): 64 MACs per instruction. Four accumulators are reduced
//!   at once (`hsum4`). Int8 weights (`w8`, B = 8) take `|w|` by `vpabsb`
//!   (128 for -128 is a valid unsigned operand).
//! * `shift`: no multiply. `p = 4h + l` (`h` in 0..1, `l` in 0..3): each
//!   term is `(x << l) ^ m` by `vpsllvw` on 32 `i16` lanes, added by a
//!   masked `vpaddw` to one of two `i16` accumulators, the `h = 1` one
//!   weighted by 16 when it is widened. A term is at most 1024 in
//!   magnitude, so 31 fit an `i16` lane; the accumulators are widened to
//!   `i32` (shifts and adds, no `vpmaddwd`) every `SHIFT_FLUSH` blocks.
//!   5 instructions per 32 MACs per pixel, against 4 per 8 for AVX2.
//! * `fexp`: the weight is one `i32` per code, `(p << 23) | (s << 31)`,
//!   from a 16-entry `vpermd` table; a term is `bits(x) + that` (adding
//!   the sign bit flips it), masked to zero for zero activations by
//!   `vptestmd`, and `vaddps`: no multiply, no mask plane in the patch.
//! * `fma`: not a family: the same layout with the weight as a float
//!   (`vpermps` table) and `vfmadd231ps`, the baseline the `fexp` target is
//!   measured against ([`conv_fma_f32`]).
//! * `dw-shift`: [`crate::depthwise`] compiled for AVX-512BW.

use core::arch::x86_64::*;

use super::avx2::NO_MIN;
use crate::dispatch::tile::{self, each_row, fexp_put_bits, RowKernel};
use crate::dispatch::Isa;
use crate::scalar::Affine;
use crate::{Conv2dGeom, PackedRows, Requant};

/// Load block `blk` of a row: 64 codes of `B` bits, one per byte, the
/// code in the byte's low `B` bits and anything above them (callers mask,
/// or look up 64-entry tables that repeat every `2^B` entries); `B = 8`:
/// 64 int8 weights as they are. `SPLIT` (B = 4 only): the even codes
/// then the odd ones, the order of a patch that `avx2::dot_prepare` split;
/// otherwise natural order. Codes past the row's end are 0 (weight +1,
/// against the patch's zero padding); only the last block of a row can be
/// partial. Blocks within 64 bytes of the row's end take a masked load.
///
/// # Safety
/// AVX-512 (F, BW, VBMI) available.
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
#[inline]
unsafe fn load_codes<const B: u32, const SPLIT: bool>(codes: &[u8], blk: usize) -> __m512i {
    let nb = 8 * B as usize;
    let off = blk * nb;
    let rest = &codes[off.min(codes.len())..];
    let n = rest.len().min(nb);
    let mask = if n == nb {
        const {
            if B >= 8 {
                u64::MAX
            } else {
                (1u64 << (8 * B)) - 1
            }
        }
    } else {
        (1u64 << n) - 1
    };
    let v = if rest.len() >= 64 {
        // A plain load where 64 bytes of the row remain: the bytes past
        // this block's `nb` are the row's next codes, which land only in
        // bits the callers ignore (above a code's `B` bits, or outside
        // the bytes a permute or a lane shuffle takes). A masked load
        // made Linear 4096 batch 1 take 0.395 ms against 0.345.
        // SAFETY: 64 readable bytes of `rest`.
        unsafe { _mm512_loadu_si512(rest.as_ptr().cast()) }
    } else {
        // SAFETY: the mask enables only the first `n <= rest.len()` bytes
        // of `rest`; masked-off bytes are neither read nor able to fault
        // (a plain 64-byte load could cross the row's end).
        unsafe { _mm512_maskz_loadu_epi8(mask, rest.as_ptr().cast()) }
    };
    if B == 8 {
        return v;
    }
    if SPLIT && B == 4 {
        // 32 bytes in both halves; the upper half shifted down a nibble:
        // low nibbles (even codes), then high nibbles (odd codes).
        let d = _mm512_shuffle_i64x2::<0b01_00_01_00>(v, v);
        return _mm512_mask_srli_epi16(d, 0xffff_0000, d, 4);
    }
    // Quadword q (codes 8q .. 8q + 8) needs bits 8qB .. 8qB + 8B: bytes
    // qB .. qB + B of the row, moved to its own quadword by `vpermb`; then
    // code t of the quadword starts at bit tB.
    let idx = const { perm_index(if B < 8 { B } else { 4 }) };
    let ctl = const { shift_control(if B < 8 { B } else { 4 }) };
    // SAFETY: 64 readable bytes each.
    let (idx, ctl) = unsafe {
        (
            _mm512_loadu_si512(idx.as_ptr().cast()),
            _mm512_loadu_si512(ctl.as_ptr().cast()),
        )
    };
    _mm512_multishift_epi64_epi8(ctl, _mm512_permutexvar_epi8(idx, v))
}

/// [`load_codes`] in natural order with clean bytes (`< 2^B`).
///
/// # Safety
/// AVX-512 (F, BW, VBMI) available.
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
#[inline]
pub(super) unsafe fn decode64<const B: u32>(codes: &[u8], blk: usize) -> __m512i {
    // SAFETY: forwarded.
    let v = unsafe { load_codes::<B, false>(codes, blk) };
    if B == 8 {
        v
    } else {
        _mm512_and_si512(v, _mm512_set1_epi8(((1u32 << B) - 1) as i8))
    }
}

/// `vpermb` indices of [`load_codes`]: byte `t` of quadword `q` is row
/// byte `qB + t`.
const fn perm_index(b: u32) -> [u8; 64] {
    let mut t = [0u8; 64];
    let mut i = 0;
    while i < 64 {
        t[i] = ((i / 8) as u32 * b + (i % 8) as u32) as u8;
        i += 1;
    }
    t
}

/// `vpmultishiftqb` controls of [`load_codes`]: byte `t` of every
/// quadword starts at bit `tB`.
pub(super) const fn shift_control(b: u32) -> [u8; 64] {
    let mut t = [0u8; 64];
    let mut i = 0;
    while i < 64 {
        t[i] = ((i % 8) as u32 * b) as u8;
        i += 1;
    }
    t
}

/// A 64-entry `vpermb` table of `|w|` per code, repeating every `2^b`
/// entries (so a code byte's bits above `b` do not matter): for every
/// code (`SIGNS = 3`), only positive weights (`1`, zero for negative
/// ones) or only negative ones (`2`).
const fn abs_table(b: u32, signs: u8) -> [u8; 64] {
    let maxp = (1u32 << (b - 1)) - 1;
    let mut t = [0u8; 64];
    let mut i = 0;
    while i < 64 {
        let c = i as u32 & ((1 << b) - 1);
        let neg = c >> (b - 1) & 1 == 1;
        let keep = if neg { signs & 2 != 0 } else { signs & 1 != 0 };
        t[i] = if keep { (1u32 << (c & maxp)) as u8 } else { 0 };
        i += 1;
    }
    t
}

// --------------------------------------------------------------------------
// dot

struct Dot;

/// Rows per call at one pixel (a linear layer): eight rows share each
/// activation load, and their accumulators are independent chains.
const GEMV_ROWS: usize = 8;

/// `R` rows against `NP` patches over one chunk, 64 codes per step.
/// `SIGN` (the chunk has no -128): one `|w|` lookup, the sign applied to
/// `x` by a masked subtract (`-x` fits int8). Otherwise two lookups, `|w|`
/// of the positive and of the negative weights, into two accumulators
/// whose difference is the sum: exact for every `x`.
///
/// # Safety
/// AVX-512 (F, BW, VBMI, VNNI) available; `xs` holds `NP` patches of
/// `stride` elements, zero from `kc` to a multiple of 64, split by
/// `avx2::dot_prepare` when `B = 4`; `rows.len() == out.len() == R`.
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi,avx512vnni")]
unsafe fn dot_rows<const B: u32, const NP: usize, const R: usize, const SIGN: bool>(
    rows: &[&[u8]],
    kc: usize,
    xs: &[i8],
    stride: usize,
    out: &mut [[i32; NP]],
) {
    let bb = if B < 8 { B } else { 4 };
    let (tabs, tabp, tabn) = (
        const { abs_table(if B < 8 { B } else { 4 }, 3) },
        const { abs_table(if B < 8 { B } else { 4 }, 1) },
        const { abs_table(if B < 8 { B } else { 4 }, 2) },
    );
    // SAFETY: 64 readable bytes each.
    let (tabs, tabp, tabn) = unsafe {
        (
            _mm512_loadu_si512(tabs.as_ptr().cast()),
            _mm512_loadu_si512(tabp.as_ptr().cast()),
            _mm512_loadu_si512(tabn.as_ptr().cast()),
        )
    };
    let sbit = _mm512_set1_epi8((1u8 << (bb - 1)) as i8);
    let zero = _mm512_setzero_si512();
    let nblk = kc.div_ceil(64);
    assert!(rows.len() == R && out.len() == R);
    assert!(xs.len() >= (NP - 1) * stride + nblk * 64);
    let xp = xs.as_ptr();
    let nb = 8 * B as usize;
    let len = rows[0].len();
    // Per row and pixel: the sum, or (without SIGN) the positive part.
    let mut acc = [[zero; NP]; R];
    // Without SIGN: the negative part.
    let mut accn = [[zero; NP]; R];
    for blk in 0..nblk {
        if R > 1 {
            // Rows of a layer lie back to back, so the next group's codes
            // follow this group's last row: fetching them as one
            // sequential stream keeps layers beyond the cache at memory
            // speed (the AVX2 kernel measured this). A hint: a wrong
            // address costs only bandwidth.
            let next = rows[R - 1].as_ptr().wrapping_add(len + blk * R * nb);
            for o in (0..R * nb).step_by(64) {
                _mm_prefetch::<_MM_HINT_T0>(next.wrapping_add(o).cast());
            }
        }
        let mut xv = [zero; NP];
        for (j, v) in xv.iter_mut().enumerate() {
            // SAFETY: `j * stride + blk * 64 + 64 <= xs.len()` (assert).
            *v = unsafe { _mm512_loadu_si512(xp.add(j * stride + blk * 64).cast()) };
        }
        for r in 0..R {
            // SAFETY: AVX-512 available (caller).
            let c = unsafe { load_codes::<B, true>(rows[r], blk) };
            if SIGN {
                let (absw, neg) = if B == 8 {
                    (_mm512_abs_epi8(c), _mm512_movepi8_mask(c))
                } else {
                    (
                        _mm512_permutexvar_epi8(c, tabs),
                        _mm512_test_epi8_mask(c, sbit),
                    )
                };
                for j in 0..NP {
                    let sx = _mm512_mask_sub_epi8(xv[j], neg, zero, xv[j]);
                    acc[r][j] = _mm512_dpbusd_epi32(acc[r][j], absw, sx);
                }
            } else {
                let (wp, wn) = if B == 8 {
                    let neg = _mm512_movepi8_mask(c);
                    let a = _mm512_abs_epi8(c);
                    (
                        _mm512_maskz_mov_epi8(!neg, a),
                        _mm512_maskz_mov_epi8(neg, a),
                    )
                } else {
                    (
                        _mm512_permutexvar_epi8(c, tabp),
                        _mm512_permutexvar_epi8(c, tabn),
                    )
                };
                for j in 0..NP {
                    acc[r][j] = _mm512_dpbusd_epi32(acc[r][j], wp, xv[j]);
                    accn[r][j] = _mm512_dpbusd_epi32(accn[r][j], wn, xv[j]);
                }
            }
        }
    }
    if NP == 1 {
        // A linear layer: one reduction per row and 64 blocks or more.
        for r in 0..R {
            let s = if SIGN {
                acc[r][0]
            } else {
                _mm512_sub_epi32(acc[r][0], accn[r][0])
            };
            out[r][0] = out[r][0].wrapping_add(_mm512_reduce_add_epi32(s));
        }
        return;
    }
    // The sums of all R x NP accumulators, four at a time.
    let mut sums = [[zero; NP]; R];
    for r in 0..R {
        for j in 0..NP {
            sums[r][j] = if SIGN {
                acc[r][j]
            } else {
                _mm512_sub_epi32(acc[r][j], accn[r][j])
            };
        }
    }
    let flat = sums.as_flattened();
    let mut i = 0;
    while i < flat.len() {
        let n = (flat.len() - i).min(4);
        let mut four = [zero; 4];
        four[..n].copy_from_slice(&flat[i..i + n]);
        let mut t = [0i32; 4];
        // SAFETY: AVX-512 available (caller); `t` holds 16 bytes.
        unsafe { _mm_storeu_si128(t.as_mut_ptr().cast(), hsum4(four)) };
        for (q, &v) in t[..n].iter().enumerate() {
            let (r, j) = ((i + q) / NP, (i + q) % NP);
            out[r][j] = out[r][j].wrapping_add(v);
        }
        i += n;
    }
}

/// The lane sums of four vectors, `[Σ a, Σ b, Σ c, Σ d]`: 11 instructions
/// where four separate reductions take about 36 (a chunk of a 3x3 conv
/// with 64 input channels is only 9 blocks, so this is not noise).
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn hsum4(v: [__m512i; 4]) -> __m128i {
    // Pairs interleaved: lanes alternate a, b (c, d) partial sums.
    let ab = _mm512_add_epi32(
        _mm512_unpacklo_epi32(v[0], v[1]),
        _mm512_unpackhi_epi32(v[0], v[1]),
    );
    let cd = _mm512_add_epi32(
        _mm512_unpacklo_epi32(v[2], v[3]),
        _mm512_unpackhi_epi32(v[2], v[3]),
    );
    // Each 128-bit lane: [a, b, c, d] partial sums.
    let abcd = _mm512_add_epi32(_mm512_unpacklo_epi64(ab, cd), _mm512_unpackhi_epi64(ab, cd));
    let h = _mm256_add_epi32(
        _mm512_castsi512_si256(abcd),
        _mm512_extracti64x4_epi64::<1>(abcd),
    );
    _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256::<1>(h))
}

/// [`dot_rows`] over any number of rows: groups of [`GEMV_ROWS`] at one
/// pixel, pairs (sharing the activation loads) at several.
///
/// # Safety
/// As [`dot_rows`] without the row count.
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi,avx512vnni")]
unsafe fn dot_any<const B: u32, const NP: usize, const SIGN: bool>(
    rows: &[&[u8]],
    kc: usize,
    xs: &[i8],
    stride: usize,
    out: &mut [[i32; NP]],
) {
    let mut r = 0;
    // SAFETY (every call): forwarded from this function's contract.
    if NP == 1 {
        while r + GEMV_ROWS <= rows.len() {
            let (rs, os) = (&rows[r..r + GEMV_ROWS], &mut out[r..r + GEMV_ROWS]);
            unsafe { dot_rows::<B, NP, GEMV_ROWS, SIGN>(rs, kc, xs, stride, os) };
            r += GEMV_ROWS;
        }
    }
    while r + 2 <= rows.len() {
        let (rs, os) = (&rows[r..r + 2], &mut out[r..r + 2]);
        unsafe { dot_rows::<B, NP, 2, SIGN>(rs, kc, xs, stride, os) };
        r += 2;
    }
    if r < rows.len() {
        let (rs, os) = (&rows[r..r + 1], &mut out[r..r + 1]);
        unsafe { dot_rows::<B, NP, 1, SIGN>(rs, kc, xs, stride, os) };
    }
}

// SAFETY: X = i8, a primitive integer.
unsafe impl RowKernel for Dot {
    type In = i8;
    type X = i8;
    type Acc = i32;
    const PLANES: usize = 1;
    const ROWS: usize = GEMV_ROWS;
    crate::dispatch::tile::copy_put!(i8);
    unsafe fn prepare<const B: u32>(xs: &mut [i8], np: usize, stride: usize, kc: usize) -> u32 {
        // SAFETY: the AVX-512 level includes AVX2 (caller's contract).
        unsafe { super::avx2::dot_prepare::<B>(xs, np, stride, kc) }
    }
    unsafe fn dot<const B: u32, const NP: usize>(
        rows: &[&[u8]],
        kc: usize,
        xs: &[i8],
        stride: usize,
        out: &mut [[i32; NP]],
        mode: u32,
    ) {
        // SAFETY (both): the caller guarantees the ISA and the patches.
        if mode & NO_MIN != 0 {
            unsafe { dot_any::<B, NP, true>(rows, kc, xs, stride, out) }
        } else {
            unsafe { dot_any::<B, NP, false>(rows, kc, xs, stride, out) }
        }
    }
}

// --------------------------------------------------------------------------
// shift

struct Shift;

/// Blocks between widenings of the `i16` accumulators: each lane takes
/// two terms of at most 1024 in magnitude per block, 31 fit.
const SHIFT_FLUSH: usize = 15;

/// Add the `i16` lanes of `a` to the `i32` accumulator `acc` (low words
/// by shifting up and back, high words by an arithmetic shift; no
/// multiply), scaled by `2^s`.
#[target_feature(enable = "avx512f,avx512bw")]
#[inline]
pub(super) unsafe fn widen_add<const S: u32>(acc: __m512i, a: __m512i) -> __m512i {
    let lo = _mm512_srai_epi32::<16>(_mm512_slli_epi32::<16>(a));
    let hi = _mm512_srai_epi32::<16>(a);
    _mm512_add_epi32(acc, _mm512_slli_epi32::<S>(_mm512_add_epi32(lo, hi)))
}

/// Add 32 `i16` terms to the `i16` accumulators `acc` of their exponent
/// bucket: with b = 4, lanes in `high` (`p >= 4`, terms taken at
/// `p - 4`) to `acc[1]`, which is weighted by 16 when widened, the rest
/// to `acc[0]`; with b <= 3 all to `acc[0]`. Shared by `shift` and the
/// `lut` kernel ([`super::lut`]).
#[target_feature(enable = "avx512f,avx512bw")]
#[inline]
pub(super) unsafe fn add_term<const B: u32>(acc: &mut [__m512i; 2], high: __mmask32, t: __m512i) {
    if B == 4 {
        acc[0] = _mm512_mask_add_epi16(acc[0], !high, acc[0], t);
        acc[1] = _mm512_mask_add_epi16(acc[1], high, acc[1], t);
    } else {
        acc[0] = _mm512_add_epi16(acc[0], t);
    }
}

/// One row against `NP` patches of `i16` activations.
///
/// # Safety
/// AVX-512 (F, BW, VBMI) available; `xs` as for [`dot_rows`] (elements
/// `i16`).
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi,popcnt")]
unsafe fn shift_rows<const B: u32, const NP: usize>(
    codes: &[u8],
    kc: usize,
    xs: &[i16],
    stride: usize,
) -> [i32; NP] {
    let zero = _mm512_setzero_si512();
    // `l`: the low two exponent bits (b = 2 has one).
    let lmask = _mm512_set1_epi16(((1 << (B.min(4) - 1)) - 1).min(3));
    let hbit = _mm512_set1_epi16(4);
    let sbit = _mm512_set1_epi16(1 << (B.min(4) - 1));
    let nblk = kc.div_ceil(64);
    assert!(xs.len() >= (NP - 1) * stride + nblk * 64);
    let xp = xs.as_ptr();
    // i32 sums of the `h = 0` and `h = 1` terms (the latter weighted 16).
    let mut acc = [zero; NP];
    // i16 partial sums: [h = 0, h = 1] per pixel.
    let mut part = [[zero; 2]; NP];
    let mut negs = 0u32;
    // Blocks until the next widening (a countdown: `blk % SHIFT_FLUSH`
    // would compile to a multiply).
    let mut left = SHIFT_FLUSH;
    for blk in 0..nblk {
        // SAFETY: AVX-512 available (caller).
        let c = unsafe { decode64::<B>(codes, blk) };
        for half in 0..2 {
            let c16 = _mm512_cvtepu8_epi16(if half == 0 {
                _mm512_castsi512_si256(c)
            } else {
                _mm512_extracti64x4_epi64::<1>(c)
            });
            let l = _mm512_and_si512(c16, lmask);
            let negm = _mm512_test_epi16_mask(c16, sbit);
            let m = _mm512_movm_epi16(negm);
            let high = if B == 4 {
                _mm512_test_epi16_mask(c16, hbit)
            } else {
                0
            };
            // Each negative term is off by -1 before its bucket's weight.
            negs += (negm & !high).count_ones() + 16 * (negm & high).count_ones();
            for (j, pt) in part.iter_mut().enumerate() {
                // SAFETY: in bounds by the assert above.
                let xv =
                    unsafe { _mm512_loadu_si512(xp.add(j * stride + blk * 64 + half * 32).cast()) };
                let t = _mm512_xor_si512(_mm512_sllv_epi16(xv, l), m);
                // SAFETY: AVX-512 available (caller).
                unsafe { add_term::<B>(pt, high, t) };
            }
        }
        left -= 1;
        if left == 0 || blk + 1 == nblk {
            left = SHIFT_FLUSH;
            for (a, pt) in acc.iter_mut().zip(part.iter_mut()) {
                // SAFETY: AVX-512 available (caller).
                unsafe {
                    *a = widen_add::<0>(*a, pt[0]);
                    *a = widen_add::<4>(*a, pt[1]);
                }
                *pt = [zero; 2];
            }
        }
    }
    acc.map(|a| _mm512_reduce_add_epi32(a).wrapping_add(negs as i32))
}

// SAFETY: X = i16, a primitive integer.
unsafe impl RowKernel for Shift {
    type In = i8;
    type X = i16;
    type Acc = i32;
    const PLANES: usize = 1;
    #[inline]
    fn put(slot: &mut [i16], _len: usize, i: usize, v: i8) -> bool {
        slot[i] = v as i16;
        true
    }
    unsafe fn dot<const B: u32, const NP: usize>(
        rows: &[&[u8]],
        kc: usize,
        xs: &[i16],
        stride: usize,
        out: &mut [[i32; NP]],
        _mode: u32,
    ) {
        // SAFETY: the caller guarantees the ISA and the patches.
        each_row(rows, out, |c| unsafe {
            shift_rows::<B, NP>(c, kc, xs, stride)
        })
    }
}

// --------------------------------------------------------------------------
// fexp and its FMA baseline

/// Per code, the `i32` added to an activation's bits: `(p << 23)` with the
/// sign bit of a negative weight (16 entries).
pub(super) const fn fexp_table(b: u32) -> [u32; 16] {
    let maxp = (1u32 << (b - 1)) - 1;
    let mut t = [0u32; 16];
    let mut i = 0;
    while i < 16 {
        let c = i as u32 & ((1 << b) - 1);
        t[i] = ((c & maxp) << 23) | ((c >> (b - 1)) << 31);
        i += 1;
    }
    t
}

/// Per code, the bits of the weight as an `f32` (16 entries): 1.0 with
/// the code's exponent and sign added.
pub(super) const fn weight_bits(b: u32) -> [u32; 16] {
    let mut t = fexp_table(b);
    let mut i = 0;
    while i < 16 {
        t[i] = 0x3f80_0000u32.wrapping_add(t[i]);
        i += 1;
    }
    t
}

/// The four 16-code quarters of a decoded block as `i32` lanes.
#[target_feature(enable = "avx512f")]
#[inline]
pub(super) unsafe fn quarters(c: __m512i) -> [__m512i; 4] {
    [
        _mm512_cvtepu8_epi32(_mm512_extracti32x4_epi32::<0>(c)),
        _mm512_cvtepu8_epi32(_mm512_extracti32x4_epi32::<1>(c)),
        _mm512_cvtepu8_epi32(_mm512_extracti32x4_epi32::<2>(c)),
        _mm512_cvtepu8_epi32(_mm512_extracti32x4_epi32::<3>(c)),
    ]
}

struct Fexp;

/// One row against `NP` patches of activation bits: `term(acc, x, w)`
/// adds one vector of 16 terms, `w` being the code's entry of `tab` (a
/// 16-entry `vpermd` table). Inlined into [`fexp_rows`] and [`fma_rows`],
/// which differ only in the table and the term.
///
/// # Safety
/// AVX-512 (F, BW, VBMI) available; `xs` as for [`dot_rows`] (elements
/// `u32`, zero for a zero activation).
#[inline(always)]
unsafe fn float_rows<const B: u32, const NP: usize>(
    codes: &[u8],
    kc: usize,
    xs: &[u32],
    stride: usize,
    tab: &[u32; 16],
    term: impl Fn(__m512, __m512i, __m512i) -> __m512,
) -> [f32; NP] {
    // SAFETY (every intrinsic below): AVX-512 available (this function's
    // contract); the loads are in bounds as commented.
    unsafe {
        let tab = _mm512_loadu_si512(tab.as_ptr().cast());
        let mut acc = [_mm512_setzero_ps(); NP];
        let nblk = kc.div_ceil(64);
        assert!(xs.len() >= (NP - 1) * stride + nblk * 64);
        let xp = xs.as_ptr();
        for blk in 0..nblk {
            let c = decode64::<B>(codes, blk);
            for (s, cq) in quarters(c).into_iter().enumerate() {
                let wv = _mm512_permutexvar_epi32(cq, tab);
                for (j, a) in acc.iter_mut().enumerate() {
                    // In bounds by the assert above.
                    let xv = _mm512_loadu_si512(xp.add(j * stride + blk * 64 + s * 16).cast());
                    *a = term(*a, xv, wv);
                }
            }
        }
        acc.map(|a| _mm512_reduce_add_ps(a))
    }
}

/// `fexp` of one row: `bits(x) + w` (zero activations masked) and
/// `vaddps`; no multiply.
///
/// # Safety
/// As [`float_rows`].
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
unsafe fn fexp_rows<const B: u32, const NP: usize>(
    codes: &[u8],
    kc: usize,
    xs: &[u32],
    stride: usize,
) -> [f32; NP] {
    let tab = const { fexp_table(if B < 8 { B } else { 4 }) };
    // SAFETY: forwarded from this function's contract.
    unsafe {
        float_rows::<B, NP>(codes, kc, xs, stride, &tab, |a, xv, wv| {
            let t = _mm512_maskz_add_epi32(_mm512_test_epi32_mask(xv, xv), xv, wv);
            _mm512_add_ps(a, _mm512_castsi512_ps(t))
        })
    }
}

// SAFETY: X = u32, a primitive integer.
unsafe impl RowKernel for Fexp {
    type In = f32;
    type X = u32;
    type Acc = f32;
    const PLANES: usize = 1;
    #[inline]
    fn put(slot: &mut [u32], _len: usize, i: usize, v: f32) -> bool {
        fexp_put_bits(slot, i, v)
    }
    unsafe fn dot<const B: u32, const NP: usize>(
        rows: &[&[u8]],
        kc: usize,
        xs: &[u32],
        stride: usize,
        out: &mut [[f32; NP]],
        _mode: u32,
    ) {
        // SAFETY: the caller guarantees the ISA and the patches.
        each_row(rows, out, |c| unsafe {
            fexp_rows::<B, NP>(c, kc, xs, stride)
        })
    }
}

struct Fma;

/// [`fexp_rows`] with a float weight and a fused multiply-add.
///
/// # Safety
/// As [`float_rows`].
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
unsafe fn fma_rows<const B: u32, const NP: usize>(
    codes: &[u8],
    kc: usize,
    xs: &[u32],
    stride: usize,
) -> [f32; NP] {
    let tab = const { weight_bits(if B < 8 { B } else { 4 }) };
    // SAFETY: forwarded from this function's contract.
    unsafe {
        float_rows::<B, NP>(codes, kc, xs, stride, &tab, |a, xv, wv| {
            _mm512_fmadd_ps(_mm512_castsi512_ps(xv), _mm512_castsi512_ps(wv), a)
        })
    }
}

// SAFETY: X = u32, a primitive integer.
unsafe impl RowKernel for Fma {
    type In = f32;
    type X = u32;
    type Acc = f32;
    const PLANES: usize = 1;
    #[inline]
    fn put(slot: &mut [u32], _len: usize, i: usize, v: f32) -> bool {
        // Same fast path as `fexp`, so both kernels do the same work.
        fexp_put_bits(slot, i, v)
    }
    unsafe fn dot<const B: u32, const NP: usize>(
        rows: &[&[u8]],
        kc: usize,
        xs: &[u32],
        stride: usize,
        out: &mut [[f32; NP]],
        _mode: u32,
    ) {
        // SAFETY: the caller guarantees the ISA and the patches.
        each_row(rows, out, |c| unsafe {
            fma_rows::<B, NP>(c, kc, xs, stride)
        })
    }
}

// --------------------------------------------------------------------------
// Entry points (the scalar signatures). Each panics if the CPU lacks the
// AVX-512 level.

/// `avx512/dot`: equal to [`crate::scalar::conv_shift_i8`].
pub fn conv_dot_i8(
    g: &Conv2dGeom,
    x: &[i8],
    w: &PackedRows,
    oc0: usize,
    rq: &[Requant],
    out: &mut [i8],
) {
    tile::shift_i8::<Dot>(Isa::Avx512, g, x, w, oc0, rq, out)
}

/// `avx512/shift`: equal to [`crate::scalar::conv_shift_i8`]; no multiply.
pub fn conv_shift_i8(
    g: &Conv2dGeom,
    x: &[i8],
    w: &PackedRows,
    oc0: usize,
    rq: &[Requant],
    out: &mut [i8],
) {
    tile::shift_i8::<Shift>(Isa::Avx512, g, x, w, oc0, rq, out)
}

/// `avx512/w8`: equal to [`crate::scalar::conv_w8_i8`] (int8 weights).
pub fn conv_w8_i8(g: &Conv2dGeom, x: &[i8], w: &[i8], oc0: usize, rq: &[Requant], out: &mut [i8]) {
    tile::w8_i8::<Dot>(Isa::Avx512, g, x, w, oc0, rq, out)
}

/// `avx512/fexp`: [`crate::scalar::conv_shift_f32`] within the summation
/// bound; no multiply per MAC.
pub fn conv_fexp_f32(
    g: &Conv2dGeom,
    x: &[f32],
    w: &PackedRows,
    oc0: usize,
    ep: &[Affine],
    out: &mut [f32],
) {
    tile::shift_f32::<Fexp>(Isa::Avx512, g, x, w, oc0, ep, out)
}

/// The FMA baseline of the `fexp` target: the same driver, patch layout,
/// code decode and fast-path rule as [`conv_fexp_f32`], but each weight is
/// a float multiplied in by `vfmadd231ps`. Not registered (it multiplies,
/// so it belongs to no family); the kernel benchmark compares the two.
/// Within the same bound of [`crate::scalar::conv_shift_f32`].
pub fn conv_fma_f32(
    g: &Conv2dGeom,
    x: &[f32],
    w: &PackedRows,
    oc0: usize,
    ep: &[Affine],
    out: &mut [f32],
) {
    tile::shift_f32::<Fma>(Isa::Avx512, g, x, w, oc0, ep, out)
}

super::depthwise_kernel!(
    Avx512,
    "avx512f,avx512bw",
    "avx512/dw-shift",
    "avx512/dw-fexp"
);
