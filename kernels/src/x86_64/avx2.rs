//! AVX2 kernels (with FMA and BMI2, [`Isa::Avx2`]).
//!
//! Codes are decoded in registers, 32 per block, in natural order: b = 4 by
//! nibble split + byte interleave; b = 2 and 3 by `pdep` (8 codes per
//! instruction; fast on Intel and Zen3+, microcoded on Zen1/2).
//!
//! Sign trick shared by the int8 kernels: with `m = -1` on a negative
//! weight and `0` otherwise, `x ^ m` is `x` or `-x - 1`, so
//! `sum w*x = sum |w| * (x ^ m) + sum_neg |w|` (dot) and
//! `sum s*(x << p) = sum ((x << p) ^ m) + count_neg` (shift). The
//! correction depends on the weights only, is computed from the same
//! decoded lanes in the same loop (so zero-padded lanes cancel), and every
//! term stays in range: `|w|` in 1..=128 fits the unsigned operand of
//! `vpmaddubsw` and `x ^ m` the signed one, pair sums in
//! [-32768, 32512] never saturate. (A 4-bit weight of +128 does not fit
//! int8; here it never has to.)
//!
//! * `dot`: `vpshufb` table `code -> |w|`, `vpmaddubsw` + `vpmaddwd`.
//! * `shift`: `vpsllvd` on i32 lanes, XOR, add: no multiply.
//! * `fexp`: `bits(x) + (p << 23)` (zero activations masked), XOR sign,
//!   `vaddps`; activations whose result could leave the normal range make
//!   their pixel take the exact scalar path.

use core::arch::x86_64::*;

use crate::dispatch::tile::{self, fexp_put, fexp_slow, RowKernel};
use crate::dispatch::Isa;
use crate::scalar::Affine;
use crate::{Bits, Conv2dGeom, PackedRows, Requant};

const FEATURES_MSG: &str = "AVX2 kernel called on a CPU without AVX2/FMA/BMI2";

/// Decode 32 codes of `B` bits from `4 * B` bytes at `p`, natural order,
/// one clean code (`< 2^B`) per byte.
///
/// # Safety
/// AVX2 and BMI2 available; `p .. p + 4 * B` readable.
#[target_feature(enable = "avx2,bmi2")]
#[inline]
unsafe fn decode32<const B: u32>(p: *const u8) -> __m256i {
    match B {
        4 => {
            // SAFETY: 16 readable bytes (caller).
            let v = unsafe { _mm_loadu_si128(p.cast()) };
            let m = _mm_set1_epi8(0x0f);
            let lo = _mm_and_si128(v, m);
            let hi = _mm_and_si128(_mm_srli_epi16::<4>(v), m);
            _mm256_set_m128i(_mm_unpackhi_epi8(lo, hi), _mm_unpacklo_epi8(lo, hi))
        }
        2 => {
            // SAFETY: 8 readable bytes (caller).
            let v = unsafe { p.cast::<u64>().read_unaligned() };
            let m = 0x0303_0303_0303_0303u64;
            _mm256_set_epi64x(
                _pdep_u64(v >> 48, m) as i64,
                _pdep_u64(v >> 32, m) as i64,
                _pdep_u64(v >> 16, m) as i64,
                _pdep_u64(v, m) as i64,
            )
        }
        _ => {
            // B = 3: 12 bytes as two overlapping u64 reads, [0, 8), [4, 12).
            // SAFETY: 12 readable bytes (caller).
            let (a, b) = unsafe {
                (
                    p.cast::<u64>().read_unaligned(),
                    p.add(4).cast::<u64>().read_unaligned(),
                )
            };
            let m = 0x0707_0707_0707_0707u64;
            _mm256_set_epi64x(
                _pdep_u64(b >> 40, m) as i64,
                _pdep_u64(b >> 16, m) as i64,
                _pdep_u64(a >> 24, m) as i64,
                _pdep_u64(a, m) as i64,
            )
        }
    }
}

/// Decode block `blk` (32 codes) of a chunk: whole blocks straight from
/// `codes`, the last partial one through a zeroed copy.
///
/// # Safety
/// AVX2 and BMI2 available.
#[target_feature(enable = "avx2,bmi2")]
#[inline]
unsafe fn block<const B: u32>(codes: &[u8], blk: usize) -> __m256i {
    let nb = 4 * B as usize;
    let off = blk * nb;
    if off + nb <= codes.len() {
        // SAFETY: `off + nb <= codes.len()` bytes are readable.
        unsafe { decode32::<B>(codes.as_ptr().add(off)) }
    } else {
        let mut t = [0u8; 16];
        let rest = &codes[off.min(codes.len())..];
        t[..rest.len()].copy_from_slice(rest);
        // SAFETY: `t` has 16 >= 4 * B readable bytes.
        unsafe { decode32::<B>(t.as_ptr()) }
    }
}

#[target_feature(enable = "avx2")]
#[inline]
unsafe fn hsum_epi32(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01_00_11_10>(s));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s));
    _mm_cvtsi128_si32(s)
}

#[target_feature(enable = "avx2")]
#[inline]
unsafe fn hsum_epi64(v: __m256i) -> i64 {
    let s = _mm_add_epi64(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
    _mm_cvtsi128_si64(s) + _mm_extract_epi64::<1>(s)
}

#[target_feature(enable = "avx2")]
#[inline]
unsafe fn hsum_ps(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// `|w|` for every code (16 entries, both lanes).
fn abs_table(b: u32) -> [i8; 32] {
    let maxp = (1u32 << (b - 1)) - 1;
    let mut t = [0i8; 32];
    for (i, v) in t.iter_mut().enumerate() {
        *v = (1u32 << ((i as u32 % 16) & maxp)) as u8 as i8;
    }
    t
}

// --------------------------------------------------------------------------
// dot

struct Dot;

#[target_feature(enable = "avx2,fma,bmi2")]
unsafe fn dot_rows<const B: u32, const NP: usize>(
    codes: &[u8],
    kc: usize,
    xs: &[i8],
    stride: usize,
) -> [i32; NP] {
    let tabv = abs_table(B);
    // SAFETY: 32 readable bytes.
    let tab = unsafe { _mm256_loadu_si256(tabv.as_ptr().cast()) };
    let sbit = _mm256_set1_epi8(1 << (B - 1));
    let ones = _mm256_set1_epi16(1);
    let zero = _mm256_setzero_si256();
    let mut acc = [zero; NP];
    let mut corr = zero;
    let nblk = kc.div_ceil(32);
    assert!(xs.len() >= (NP - 1) * stride + nblk * 32);
    let xp = xs.as_ptr();
    for blk in 0..nblk {
        // SAFETY: AVX2/BMI2 available (caller).
        let c = unsafe { block::<B>(codes, blk) };
        let absw = _mm256_shuffle_epi8(tab, c);
        let sm = _mm256_cmpeq_epi8(_mm256_and_si256(c, sbit), sbit);
        corr = _mm256_add_epi64(corr, _mm256_sad_epu8(_mm256_and_si256(absw, sm), zero));
        for (j, a) in acc.iter_mut().enumerate() {
            // SAFETY: `j * stride + blk * 32 + 32 <= xs.len()` (assert above).
            let xv = unsafe { _mm256_loadu_si256(xp.add(j * stride + blk * 32).cast()) };
            let m = _mm256_maddubs_epi16(absw, _mm256_xor_si256(xv, sm));
            *a = _mm256_add_epi32(*a, _mm256_madd_epi16(m, ones));
        }
    }
    // SAFETY: AVX2 available (caller).
    let neg = unsafe { hsum_epi64(corr) } as i32;
    // SAFETY: as above.
    acc.map(|a| unsafe { hsum_epi32(a) }.wrapping_add(neg))
}

// SAFETY: X = i8, a primitive integer.
unsafe impl RowKernel for Dot {
    type In = i8;
    type X = i8;
    type Acc = i32;
    const PLANES: usize = 1;
    #[inline]
    fn put(slot: &mut [i8], _len: usize, i: usize, v: i8) -> bool {
        slot[i] = v;
        true
    }
    unsafe fn dot<const NP: usize>(
        codes: &[u8],
        bits: Bits,
        kc: usize,
        xs: &[i8],
        stride: usize,
    ) -> [i32; NP] {
        // SAFETY: the caller guarantees AVX2/FMA/BMI2.
        unsafe {
            match bits {
                Bits::B2 => dot_rows::<2, NP>(codes, kc, xs, stride),
                Bits::B3 => dot_rows::<3, NP>(codes, kc, xs, stride),
                Bits::B4 => dot_rows::<4, NP>(codes, kc, xs, stride),
            }
        }
    }
}

// --------------------------------------------------------------------------
// shift

struct Shift;

#[target_feature(enable = "avx2,fma,bmi2")]
unsafe fn shift_rows<const B: u32, const NP: usize>(
    codes: &[u8],
    kc: usize,
    xs: &[i32],
    stride: usize,
) -> [i32; NP] {
    let pmask = _mm256_set1_epi32((1 << (B - 1)) - 1);
    let sbit = _mm256_set1_epi32(1 << (B - 1));
    let zero = _mm256_setzero_si256();
    let mut acc = [zero; NP];
    let mut cnt = zero;
    let nblk = kc.div_ceil(32);
    assert!(xs.len() >= (NP - 1) * stride + nblk * 32);
    let xp = xs.as_ptr();
    for blk in 0..nblk {
        // SAFETY: AVX2/BMI2 available (caller).
        let c = unsafe { block::<B>(codes, blk) };
        let lo = _mm256_castsi256_si128(c);
        let hi = _mm256_extracti128_si256::<1>(c);
        let parts = [lo, _mm_srli_si128::<8>(lo), hi, _mm_srli_si128::<8>(hi)];
        for (s, part) in parts.into_iter().enumerate() {
            let c32 = _mm256_cvtepu8_epi32(part);
            let p = _mm256_and_si256(c32, pmask);
            let sm = _mm256_cmpeq_epi32(_mm256_and_si256(c32, sbit), sbit);
            cnt = _mm256_add_epi32(cnt, sm);
            for (j, a) in acc.iter_mut().enumerate() {
                // SAFETY: in bounds by the assert above.
                let xv =
                    unsafe { _mm256_loadu_si256(xp.add(j * stride + blk * 32 + s * 8).cast()) };
                *a = _mm256_add_epi32(*a, _mm256_xor_si256(_mm256_sllv_epi32(xv, p), sm));
            }
        }
    }
    // SAFETY: AVX2 available (caller).
    let neg = unsafe { hsum_epi32(cnt) };
    // SAFETY: as above.
    acc.map(|a| unsafe { hsum_epi32(a) }.wrapping_sub(neg))
}

// SAFETY: X = i32, a primitive integer.
unsafe impl RowKernel for Shift {
    type In = i8;
    type X = i32;
    type Acc = i32;
    const PLANES: usize = 1;
    #[inline]
    fn put(slot: &mut [i32], _len: usize, i: usize, v: i8) -> bool {
        slot[i] = v as i32;
        true
    }
    unsafe fn dot<const NP: usize>(
        codes: &[u8],
        bits: Bits,
        kc: usize,
        xs: &[i32],
        stride: usize,
    ) -> [i32; NP] {
        // SAFETY: the caller guarantees AVX2/FMA/BMI2.
        unsafe {
            match bits {
                Bits::B2 => shift_rows::<2, NP>(codes, kc, xs, stride),
                Bits::B3 => shift_rows::<3, NP>(codes, kc, xs, stride),
                Bits::B4 => shift_rows::<4, NP>(codes, kc, xs, stride),
            }
        }
    }
}

// --------------------------------------------------------------------------
// fexp

struct Fexp;

#[target_feature(enable = "avx2,fma,bmi2")]
unsafe fn fexp_rows<const B: u32, const NP: usize>(
    codes: &[u8],
    kc: usize,
    xs: &[u32],
    stride: usize,
) -> [f32; NP] {
    let pmask = _mm256_set1_epi32((1 << (B - 1)) - 1);
    let sshift = _mm_cvtsi32_si128(B as i32 - 1);
    let mut acc = [_mm256_setzero_ps(); NP];
    let nblk = kc.div_ceil(32);
    let half = stride / 2;
    assert!(xs.len() >= (NP - 1) * stride + half + nblk * 32);
    let xp = xs.as_ptr();
    for blk in 0..nblk {
        // SAFETY: AVX2/BMI2 available (caller).
        let c = unsafe { block::<B>(codes, blk) };
        let lo = _mm256_castsi256_si128(c);
        let hi = _mm256_extracti128_si256::<1>(c);
        let parts = [lo, _mm_srli_si128::<8>(lo), hi, _mm_srli_si128::<8>(hi)];
        for (s, part) in parts.into_iter().enumerate() {
            let c32 = _mm256_cvtepu8_epi32(part);
            let pe = _mm256_slli_epi32::<23>(_mm256_and_si256(c32, pmask));
            let sg = _mm256_slli_epi32::<31>(_mm256_srl_epi32(c32, sshift));
            for (j, a) in acc.iter_mut().enumerate() {
                let o = j * stride + blk * 32 + s * 8;
                // SAFETY: in bounds by the assert above.
                let (xv, mv) = unsafe {
                    (
                        _mm256_loadu_si256(xp.add(o).cast()),
                        _mm256_loadu_si256(xp.add(o + half).cast()),
                    )
                };
                let t = _mm256_xor_si256(_mm256_add_epi32(xv, _mm256_and_si256(pe, mv)), sg);
                *a = _mm256_add_ps(*a, _mm256_castsi256_ps(t));
            }
        }
    }
    // SAFETY: AVX2 available (caller).
    acc.map(|a| unsafe { hsum_ps(a) })
}

// SAFETY: X = u32, a primitive integer.
unsafe impl RowKernel for Fexp {
    type In = f32;
    type X = u32;
    type Acc = f32;
    const PLANES: usize = 2;
    #[inline]
    fn put(slot: &mut [u32], len: usize, i: usize, v: f32) -> bool {
        fexp_put(slot, len, i, v)
    }
    unsafe fn dot<const NP: usize>(
        codes: &[u8],
        bits: Bits,
        kc: usize,
        xs: &[u32],
        stride: usize,
    ) -> [f32; NP] {
        // SAFETY: the caller guarantees AVX2/FMA/BMI2.
        unsafe {
            match bits {
                Bits::B2 => fexp_rows::<2, NP>(codes, kc, xs, stride),
                Bits::B3 => fexp_rows::<3, NP>(codes, kc, xs, stride),
                Bits::B4 => fexp_rows::<4, NP>(codes, kc, xs, stride),
            }
        }
    }
}

// --------------------------------------------------------------------------
// Entry points (the scalar signatures).

/// `avx2/dot`: equal to [`crate::scalar::conv_shift_i8`].
/// Panics if the CPU lacks AVX2/FMA/BMI2.
pub fn conv_dot_i8(
    g: &Conv2dGeom,
    x: &[i8],
    w: &PackedRows,
    oc0: usize,
    rq: &[Requant],
    out: &mut [i8],
) {
    assert!(Isa::Avx2.available(), "{FEATURES_MSG}");
    tile::check(g, x.len(), w, oc0, rq.len(), out.len());
    let plane = g.out_plane();
    // SAFETY: AVX2, FMA and BMI2 were detected (assert above); arguments
    // checked.
    unsafe {
        tile::conv::<Dot>(
            g,
            x,
            w,
            oc0,
            |r, q, a| out[r * plane + q] = rq[r].apply(a),
            |_, _| 0,
        )
    }
}

/// `avx2/shift`: equal to [`crate::scalar::conv_shift_i8`]; no multiply.
/// Panics if the CPU lacks AVX2/FMA/BMI2.
pub fn conv_shift_i8(
    g: &Conv2dGeom,
    x: &[i8],
    w: &PackedRows,
    oc0: usize,
    rq: &[Requant],
    out: &mut [i8],
) {
    assert!(Isa::Avx2.available(), "{FEATURES_MSG}");
    tile::check(g, x.len(), w, oc0, rq.len(), out.len());
    let plane = g.out_plane();
    // SAFETY: AVX2, FMA and BMI2 were detected (assert above); arguments
    // checked.
    unsafe {
        tile::conv::<Shift>(
            g,
            x,
            w,
            oc0,
            |r, q, a| out[r * plane + q] = rq[r].apply(a),
            |_, _| 0,
        )
    }
}

/// `avx2/fexp`: [`crate::scalar::conv_shift_f32`] within the summation
/// bound; no multiply per MAC. Panics if the CPU lacks AVX2/FMA/BMI2.
pub fn conv_fexp_f32(
    g: &Conv2dGeom,
    x: &[f32],
    w: &PackedRows,
    oc0: usize,
    ep: &[Affine],
    out: &mut [f32],
) {
    assert!(Isa::Avx2.available(), "{FEATURES_MSG}");
    tile::check(g, x.len(), w, oc0, ep.len(), out.len());
    let plane = g.out_plane();
    // SAFETY: AVX2, FMA and BMI2 were detected (assert above); arguments
    // checked.
    unsafe {
        tile::conv::<Fexp>(
            g,
            x,
            w,
            oc0,
            |r, q, a| out[r * plane + q] = ep[r].apply(a),
            |r, q| fexp_slow(g, x, w, oc0 + r, r, q),
        )
    }
}
