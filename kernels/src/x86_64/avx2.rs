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
//!   At [`Isa::AvxVnni`] (`avxvnni/dot`, `avxvnni/w8`) the same body runs
//!   with one `vpdpbusd` instead (exact: no 16-bit intermediate), in its
//!   VEX encoding (AVX-VNNI) or, on CPUs without it, its EVEX one on
//!   `ymm` (AVX-512 VL + VNNI): the `dot_group!` macro compiles the body
//!   once per encoding with that encoding's target features.
//!   The same kernel runs int8 weights (`w8`, kept layers; `B = 8`):
//!   `|w|` by `vpabsb` (128 for -128, still a valid unsigned operand).
//!   When a chunk's patch holds no -128 (checked once per chunk, shared by
//!   all rows), the sign goes on `x` by `vpsignb` (`-x` fits int8), so the
//!   correction sum drops out; pair sums stay within +-32512. With b = 4
//!   each 64-block of the patch is split once into even and odd
//!   activations, so 64 codes decode from one 32-byte load (low and high
//!   nibbles) with no byte interleave. At one pixel (linear layers) four
//!   rows run per loop.
//! * `shift`: `vpsllvd` on i32 lanes, XOR, add: no multiply.
//! * `lut`: lanes are 16 output channels; per activation a 16-byte table
//!   of `x << p` (i16 split in low/high bytes, built once per pixel tile
//!   and shared by every row), `vpshufb` with index words `(p, p + 8)`,
//!   XOR with the sign mask, i16 adds widened to i32 before they can
//!   overflow. The codes of 16 rows are decoded and transposed in
//!   registers (16x16 byte transpose per 128-bit lane). No multiply.
//! * `fexp`: `bits(x) + (p << 23)` (zero activations masked), XOR sign,
//!   `vaddps`; activations whose result could leave the normal range make
//!   their pixel take the exact scalar path.

use core::arch::x86_64::*;

use crate::dispatch::tile::{self, each_row, fexp_put, RowKernel, LUT_TABLES};
use crate::dispatch::Isa;
use crate::scalar::Affine;
use crate::{Conv2dGeom, PackedRows, Requant};

/// Decode 32 codes of `B` bits from `4 * B` bytes at `p`, natural order,
/// one clean code (`< 2^B`) per byte; `B = 8`: 32 int8 weights as they are.
///
/// # Safety
/// AVX2 and BMI2 available; `p .. p + 4 * B` readable.
#[target_feature(enable = "avx2,bmi2")]
#[inline]
unsafe fn decode32<const B: u32>(p: *const u8) -> __m256i {
    match B {
        // SAFETY: 32 readable bytes (caller).
        8 => unsafe { _mm256_loadu_si256(p.cast()) },
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
        let mut t = [0u8; 32];
        let rest = &codes[off.min(codes.len())..];
        t[..rest.len()].copy_from_slice(rest);
        // SAFETY: `t` has 32 >= 4 * B readable bytes.
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
const fn abs_table(b: u32) -> [i8; 32] {
    let maxp = (1u32 << (b - 1)) - 1;
    let mut t = [0i8; 32];
    let mut i = 0;
    while i < 32 {
        t[i] = (1u32 << ((i as u32 % 16) & maxp)) as u8 as i8;
        i += 1;
    }
    t
}

/// The sign operand of every code (16 entries, both lanes): -1 for a
/// negative weight; `pos` otherwise (+1 for `vpsignb`, which must not see
/// 0; 0 for an XOR mask).
const fn sign_table(b: u32, pos: i8) -> [i8; 32] {
    let mut t = [0i8; 32];
    let mut i = 0;
    while i < 32 {
        t[i] = if (i as u32 % 16) >> (b - 1) & 1 == 1 {
            -1
        } else {
            pos
        };
        i += 1;
    }
    t
}

// --------------------------------------------------------------------------
// dot

/// The `dot` row kernel; `V` is its multiply-add ([`MADD`], [`VEX`] or
/// [`EVEX`]).
struct Dot<const V: u8>;

/// [`RowKernel::prepare`] mode of `dot`: the chunk holds no activation of
/// -128, so `vpsignb` applies a weight's sign to `x` exactly (`-x` fits
/// int8) and no correction sum is needed.
pub(super) const NO_MIN: u32 = 1;

/// Rows per `dot_group` call at one pixel (a linear layer): the rows share
/// each activation load and the loop overhead, and their accumulators are
/// independent chains.
const GEMV_ROWS: usize = 4;

/// Decode the 64 codes of `8 * B` bytes at `p` into two vectors that go
/// with activations `0 .. 32` and `32 .. 64` of a 64-block of the patch as
/// [`Dot::prepare`] left it: b = 4 from one 32-byte load, low nibbles
/// (even codes) then high nibbles (odd codes), matching the patch that
/// `prepare` split into even and odd halves; other widths in natural order.
///
/// # Safety
/// AVX2 and BMI2 available; `p .. p + 8 * B` readable.
#[target_feature(enable = "avx2,bmi2")]
#[inline]
unsafe fn decode64<const B: u32>(p: *const u8) -> [__m256i; 2] {
    if B == 4 {
        // SAFETY: 32 readable bytes (caller).
        let v = unsafe { _mm256_loadu_si256(p.cast()) };
        let m = _mm256_set1_epi8(0x0f);
        [
            _mm256_and_si256(v, m),
            _mm256_and_si256(_mm256_srli_epi16::<4>(v), m),
        ]
    } else {
        // SAFETY: `8 * B` readable bytes (caller), two halves of `4 * B`.
        unsafe { [decode32::<B>(p), decode32::<B>(p.add(4 * B as usize))] }
    }
}

/// Split each 64-block of `n` activations at `p` into its 32 even-indexed
/// then its 32 odd-indexed ones (the order `decode64::<4>` yields codes).
///
/// # Safety
/// AVX2 available; `p .. p + n` writable, `n` a multiple of 64.
#[target_feature(enable = "avx2")]
unsafe fn split_even_odd(p: *mut i8, n: usize) {
    // Per 128-bit lane: even bytes to the low half, odd to the high half.
    let sh = _mm256_setr_epi8(
        0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15, 0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5,
        7, 9, 11, 13, 15,
    );
    for o in (0..n).step_by(64) {
        // SAFETY: `o + 64 <= n` bytes are writable (caller).
        unsafe {
            let a = _mm256_shuffle_epi8(_mm256_loadu_si256(p.add(o).cast()), sh);
            let b = _mm256_shuffle_epi8(_mm256_loadu_si256(p.add(o + 32).cast()), sh);
            // Quadwords (even 0-7, even 16-23 | even 8-15, even 24-31) put
            // in order by 0, 2, 1, 3.
            let ev = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_unpacklo_epi64(a, b));
            let od = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_unpackhi_epi64(a, b));
            _mm256_storeu_si256(p.add(o).cast(), ev);
            _mm256_storeu_si256(p.add(o + 32).cast(), od);
        }
    }
}

/// Defines a `dot` group kernel: `R` rows against `NP` patches over one
/// chunk, 64 codes per step, compiled with `$features` and with `$dot` as
/// its multiply-add, so that one body serves `vpmaddubsw` + `vpmaddwd`
/// (AVX2) and `vpdpbusd` (AVX-VNNI or AVX-512 VL + VNNI). The intrinsics
/// must be inlined into a function that has their features: a closure or
/// trait method per encoding would be compiled without them.
macro_rules! dot_group {
    ($name:ident, $features:literal, |$acc:ident, $w:ident, $x:ident| $dot:expr) => {
        /// `R` rows against `NP` patches over one chunk, 64 codes per step. With
        /// `SIGN` (the chunk has no -128) the term is `|w| * sign(x, w)`; without,
        /// `|w| * (x ^ m)` plus the correction `sum_neg |w|` (module docs).
        /// The multiply-add adds the four products of each 32-bit lane of
        /// the unsigned `|w|` and signed `x` bytes to the accumulator,
        /// exactly.
        ///
        /// # Safety
        /// The CPU has the function's target features; `xs` as [`RowKernel::dot`] describes, after
        /// [`Dot::prepare`]; `rows.len() == out.len() == R`, rows of equal length
        /// `ceil(kc * B / 8)`.
        #[target_feature(enable = $features)]
        unsafe fn $name<const B: u32, const NP: usize, const R: usize, const SIGN: bool>(
            rows: &[&[u8]],
            kc: usize,
            xs: &[i8],
            stride: usize,
            out: &mut [[i32; NP]],
        ) {
            // Built at compile time: this runs once per row and pixel tile.
            let tabv = const { abs_table(if B < 4 { B } else { 4 }) };
            let sgnv = const { sign_table(if B < 4 { B } else { 4 }, SIGN as i8) };
            // SAFETY: 32 readable bytes each.
            let (tab, tsg) = unsafe {
                (
                    _mm256_loadu_si256(tabv.as_ptr().cast()),
                    _mm256_loadu_si256(sgnv.as_ptr().cast()),
                )
            };
            let zero = _mm256_setzero_si256();
            let nb = 8 * B as usize;
            let nblk = kc.div_ceil(64);
            assert!(rows.len() == R && out.len() == R);
            assert!(xs.len() >= (NP - 1) * stride + nblk * 64);
            let len = rows[0].len();
            assert!(rows.iter().all(|r| r.len() == len) && len <= nblk * nb);
            // Whole blocks read the rows in place; the last, partial one (if
            // any) goes through zeroed copies, once, outside the hot loop.
            let nfull = len / nb;
            let xp = xs.as_ptr();
            let mut acc = [[zero; NP]; R];
            let mut corr = [zero; R];
            let mut step = |cs: [*const u8; R], blk: usize| {
                for r in 0..R {
                    // SAFETY: `cs[r]` has `nb` readable bytes (callers below).
                    let cv = unsafe { decode64::<B>(cs[r]) };
                    for (h, &c) in cv.iter().enumerate() {
                        let (absw, s) = if B == 8 {
                            let m = if SIGN { c } else { _mm256_cmpgt_epi8(zero, c) };
                            (_mm256_abs_epi8(c), m)
                        } else {
                            (_mm256_shuffle_epi8(tab, c), _mm256_shuffle_epi8(tsg, c))
                        };
                        if !SIGN {
                            corr[r] = _mm256_add_epi64(
                                corr[r],
                                _mm256_sad_epu8(_mm256_and_si256(absw, s), zero),
                            );
                        }
                        for (j, a) in acc[r].iter_mut().enumerate() {
                            // SAFETY: `j * stride + blk * 64 + 64 <= xs.len()`
                            // (assert above; `blk < nblk`).
                            let xv = unsafe {
                                _mm256_loadu_si256(xp.add(j * stride + blk * 64 + h * 32).cast())
                            };
                            let xv = if SIGN {
                                _mm256_sign_epi8(xv, s)
                            } else {
                                _mm256_xor_si256(xv, s)
                            };
                            let ($acc, $w, $x) = (*a, absw, xv);
                            *a = $dot;
                        }
                    }
                }
            };
            for blk in 0..nfull {
                // SAFETY: `(blk + 1) * nb <= len`: in bounds of every row.
                let cs = core::array::from_fn(|r| unsafe { rows[r].as_ptr().add(blk * nb) });
                if R > 1 {
                    // Rows of a layer lie back to back, so the next group's
                    // codes follow this group's last row. Its R short streams
                    // would each have to train the hardware prefetcher (a
                    // 4096-code row is 32 cache lines at b = 4); fetching them as
                    // one sequential stream during this group keeps layers beyond
                    // the cache at memory speed. A hint: wrong addresses (chunks
                    // of longer rows, the layer's end) cost nothing but bandwidth.
                    let next = rows[R - 1].as_ptr().wrapping_add(len + blk * R * nb);
                    for o in (0..R * nb).step_by(64) {
                        _mm_prefetch::<_MM_HINT_T0>(next.wrapping_add(o).cast());
                    }
                }
                step(cs, blk);
            }
            if nfull * nb < len {
                let mut t = [[0u8; 64]; R];
                for (t, row) in t.iter_mut().zip(rows) {
                    let rest = &row[nfull * nb..];
                    tile::copy_short(&mut t[..rest.len()], rest);
                }
                // Zero codes decode to weight +1 against zero padding of `xs`.
                step(core::array::from_fn(|r| t[r].as_ptr()), nfull);
            }
            for ((o, a), c) in out.iter_mut().zip(acc.iter()).zip(corr.iter()) {
                // SAFETY: AVX2 available (this function's contract).
                let neg = if SIGN {
                    0
                } else {
                    (unsafe { hsum_epi64(*c) }) as i32
                };
                for j in 0..NP {
                    // SAFETY: as above.
                    o[j] = o[j].wrapping_add(unsafe { hsum_epi32(a[j]) }.wrapping_add(neg));
                }
            }
        }
    };
}

dot_group!(dot_group, "avx2,fma,bmi2", |acc, w, x| _mm256_add_epi32(
    acc,
    _mm256_madd_epi16(_mm256_maddubs_epi16(w, x), _mm256_set1_epi16(1))
));
dot_group!(dot_group_vex, "avx2,fma,bmi2,avxvnni", |acc, w, x| {
    _mm256_dpbusd_avx_epi32(acc, w, x)
});
dot_group!(
    dot_group_evex,
    "avx2,fma,bmi2,avx512f,avx512vl,avx512vnni",
    |acc, w, x| _mm256_dpbusd_epi32(acc, w, x)
);

/// The multiply-add of [`Dot`]: `vpmaddubsw` + `vpmaddwd` ([`Isa::Avx2`]).
const MADD: u8 = 0;
/// `vpdpbusd` in its VEX encoding (AVX-VNNI).
const VEX: u8 = 1;
/// `vpdpbusd` in its EVEX encoding on `ymm` (AVX-512 VL + VNNI).
const EVEX: u8 = 2;

/// One group of `R` rows through the [`dot_group()`] of encoding `V`.
///
/// # Safety
/// As [`dot_group()`], and the CPU has encoding `V`.
#[inline(always)]
unsafe fn dot_group_v<
    const B: u32,
    const NP: usize,
    const R: usize,
    const SIGN: bool,
    const V: u8,
>(
    rows: &[&[u8]],
    kc: usize,
    xs: &[i8],
    stride: usize,
    out: &mut [[i32; NP]],
) {
    // SAFETY (all three): forwarded from this function's contract.
    match V {
        VEX => unsafe { dot_group_vex::<B, NP, R, SIGN>(rows, kc, xs, stride, out) },
        EVEX => unsafe { dot_group_evex::<B, NP, R, SIGN>(rows, kc, xs, stride, out) },
        _ => unsafe { dot_group::<B, NP, R, SIGN>(rows, kc, xs, stride, out) },
    }
}

/// [`dot_group()`] over any number of rows: groups of [`GEMV_ROWS`] at one
/// pixel, single rows at several (their accumulators fill the registers).
///
/// # Safety
/// As [`dot_group_v`] without the row count.
#[target_feature(enable = "avx2,fma,bmi2")]
unsafe fn dot_rows<const B: u32, const NP: usize, const SIGN: bool, const V: u8>(
    rows: &[&[u8]],
    kc: usize,
    xs: &[i8],
    stride: usize,
    out: &mut [[i32; NP]],
) {
    let mut r = 0;
    if NP == 1 {
        while r + GEMV_ROWS <= rows.len() {
            let (rs, os) = (&rows[r..r + GEMV_ROWS], &mut out[r..r + GEMV_ROWS]);
            // SAFETY: forwarded from this function's contract.
            unsafe { dot_group_v::<B, NP, GEMV_ROWS, SIGN, V>(rs, kc, xs, stride, os) };
            r += GEMV_ROWS;
        }
    }
    while r < rows.len() {
        let (rs, os) = (&rows[r..r + 1], &mut out[r..r + 1]);
        // SAFETY: forwarded from this function's contract.
        unsafe { dot_group_v::<B, NP, 1, SIGN, V>(rs, kc, xs, stride, os) };
        r += 1;
    }
}

/// [`RowKernel::prepare`] of the `dot` kernels of both x86 levels: the
/// mode [`NO_MIN`] when no patch holds -128, and with b = 4 each patch
/// split into even and odd activations (the order their decode yields).
///
/// # Safety
/// AVX2 available; `xs` holds `np` patches of `stride >= kc` elements.
pub(super) unsafe fn dot_prepare<const B: u32>(
    xs: &mut [i8],
    np: usize,
    stride: usize,
    kc: usize,
) -> u32 {
    let n = kc.div_ceil(64) * 64;
    let mut no_min = true;
    for j in 0..np {
        let patch = &mut xs[j * stride..j * stride + n];
        no_min &= !patch.contains(&i8::MIN);
        if B == 4 {
            // SAFETY: AVX2 available (caller); `n` bytes writable, a
            // multiple of 64.
            unsafe { split_even_odd(patch.as_mut_ptr(), n) };
        }
    }
    if no_min {
        NO_MIN
    } else {
        0
    }
}

// SAFETY: X = i8, a primitive integer.
unsafe impl<const V: u8> RowKernel for Dot<V> {
    type In = i8;
    type X = i8;
    type Acc = i32;
    const PLANES: usize = 1;
    const ROWS: usize = GEMV_ROWS;
    crate::dispatch::tile::copy_put!(i8);
    unsafe fn prepare<const B: u32>(xs: &mut [i8], np: usize, stride: usize, kc: usize) -> u32 {
        // SAFETY: forwarded from this function's contract.
        unsafe { dot_prepare::<B>(xs, np, stride, kc) }
    }
    unsafe fn dot<const B: u32, const NP: usize>(
        rows: &[&[u8]],
        kc: usize,
        xs: &[i8],
        stride: usize,
        out: &mut [[i32; NP]],
        mode: u32,
    ) {
        // SAFETY (both): the caller guarantees AVX2/FMA/BMI2 (and
        // encoding `V`: the entry points below choose it by the CPU) and a
        // patch that `prepare` returned `mode` for.
        if mode & NO_MIN != 0 {
            unsafe { dot_rows::<B, NP, true, V>(rows, kc, xs, stride, out) }
        } else {
            unsafe { dot_rows::<B, NP, false, V>(rows, kc, xs, stride, out) }
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
    unsafe fn dot<const B: u32, const NP: usize>(
        rows: &[&[u8]],
        kc: usize,
        xs: &[i32],
        stride: usize,
        out: &mut [[i32; NP]],
        _mode: u32,
    ) {
        // SAFETY: the caller guarantees AVX2/FMA/BMI2.
        each_row(rows, out, |c| unsafe {
            shift_rows::<B, NP>(c, kc, xs, stride)
        })
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
    unsafe fn dot<const B: u32, const NP: usize>(
        rows: &[&[u8]],
        kc: usize,
        xs: &[u32],
        stride: usize,
        out: &mut [[f32; NP]],
        _mode: u32,
    ) {
        // SAFETY: the caller guarantees AVX2/FMA/BMI2.
        each_row(rows, out, |c| unsafe {
            fexp_rows::<B, NP>(c, kc, xs, stride)
        })
    }
}

// --------------------------------------------------------------------------
// lut

struct Lut;

/// Transpose a 16x16 byte matrix in each 128-bit lane: `m[r]` byte `i`
/// becomes `out[i]` byte `r` (both lanes at once).
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn transpose16(m: &[__m256i; 16]) -> [__m256i; 16] {
    let mut a = [_mm256_setzero_si256(); 16];
    for i in 0..8 {
        a[i] = _mm256_unpacklo_epi8(m[2 * i], m[2 * i + 1]);
        a[i + 8] = _mm256_unpackhi_epi8(m[2 * i], m[2 * i + 1]);
    }
    // a[g * 8 + i]: rows 2i, 2i+1, columns 8g .. 8g + 8.
    let mut b = [_mm256_setzero_si256(); 16];
    for g in 0..2 {
        for i in 0..4 {
            let (x, y) = (a[g * 8 + 2 * i], a[g * 8 + 2 * i + 1]);
            b[(2 * g) * 4 + i] = _mm256_unpacklo_epi16(x, y);
            b[(2 * g + 1) * 4 + i] = _mm256_unpackhi_epi16(x, y);
        }
    }
    // b[q * 4 + i]: rows 4i .. 4i + 4, columns 4q .. 4q + 4.
    let mut c = [_mm256_setzero_si256(); 16];
    for q in 0..4 {
        for i in 0..2 {
            let (x, y) = (b[q * 4 + 2 * i], b[q * 4 + 2 * i + 1]);
            c[(2 * q) * 2 + i] = _mm256_unpacklo_epi32(x, y);
            c[(2 * q + 1) * 2 + i] = _mm256_unpackhi_epi32(x, y);
        }
    }
    // c[cp * 2 + i]: rows 8i .. 8i + 8, columns 2cp, 2cp + 1.
    let mut o = [_mm256_setzero_si256(); 16];
    for cp in 0..8 {
        o[2 * cp] = _mm256_unpacklo_epi64(c[cp * 2], c[cp * 2 + 1]);
        o[2 * cp + 1] = _mm256_unpackhi_epi64(c[cp * 2], c[cp * 2 + 1]);
    }
    o
}

/// Add the i16 lanes of `a` (16 rows: words 0..8 of each 128-bit lane)
/// to `acc` as i32: `acc[0]` even words, `acc[1]` odd words.
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn widen_add(acc: &mut [__m256i], a: __m256i) {
    acc[0] = _mm256_add_epi32(acc[0], _mm256_srai_epi32::<16>(_mm256_slli_epi32::<16>(a)));
    acc[1] = _mm256_add_epi32(acc[1], _mm256_srai_epi32::<16>(a));
}

#[target_feature(enable = "avx2,fma,bmi2")]
unsafe fn lut_rows<const B: u32, const NP: usize>(
    rows: &[&[u8]],
    kc: usize,
    xs: &[u128],
    stride: usize,
    out: &mut [[i32; NP]],
) {
    let n = rows.len();
    assert!(n <= 16);
    // B = 8 (int8 weights) never reaches this kernel; `min` keeps its
    // unused instantiation well-formed.
    let bb = B.min(4);
    let pmask = _mm256_set1_epi8((1i8 << (bb - 1)) - 1);
    let sbit = _mm256_set1_epi8((1u8 << (bb - 1)) as i8);
    let eight = _mm256_set1_epi8(8);
    let zero = _mm256_setzero_si256();
    // Per pixel, i32 sums: [rows 0-7 even, odd, rows 8-15 even, odd].
    let mut acc = [[zero; 4]; NP];
    // Negative weights per row (i16 words; <= 256 per call).
    let mut neg = [zero; 2];
    let nblk = kc.div_ceil(32);
    assert!(xs.len() >= (NP - 1) * stride + nblk * 32);
    let xp = xs.as_ptr().cast::<u8>();
    // With b = 4 a term reaches +-2^14, so only two fit an i16 lane; with
    // b <= 3 at most 1025, and all 16 of a block do.
    let flush = if bb == 4 { 2 } else { 16 };
    for blk in 0..nblk {
        let mut m = [zero; 16];
        for (r, v) in m.iter_mut().enumerate().take(n) {
            // SAFETY: AVX2/BMI2 available (caller).
            *v = unsafe { block::<B>(rows[r], blk) };
        }
        // SAFETY: AVX2 available (caller).
        let t = unsafe { transpose16(&m) };
        // t[j]: codes j (low lane) and 16 + j (high lane) of the 16 rows.
        let mut a16 = [[zero; 2]; NP];
        for (j, &c) in t.iter().enumerate() {
            let p = _mm256_and_si256(c, pmask);
            let p8 = _mm256_or_si256(p, eight);
            let sm = _mm256_cmpeq_epi8(_mm256_and_si256(c, sbit), sbit);
            let idx = [_mm256_unpacklo_epi8(p, p8), _mm256_unpackhi_epi8(p, p8)];
            let ms = [_mm256_unpacklo_epi8(sm, sm), _mm256_unpackhi_epi8(sm, sm)];
            neg[0] = _mm256_sub_epi16(neg[0], ms[0]);
            neg[1] = _mm256_sub_epi16(neg[1], ms[1]);
            for (px, a) in a16.iter_mut().enumerate() {
                // Tables of codes j and 16 + j sit side by side (`put`).
                // SAFETY: in bounds by the assert above (two tables of 16
                // bytes at element `blk * 32 + 2j` of pixel `px`'s patch).
                let tab = unsafe {
                    _mm256_loadu_si256(xp.add((px * stride + blk * 32 + 2 * j) * 16).cast())
                };
                for h in 0..2 {
                    let v = _mm256_xor_si256(_mm256_shuffle_epi8(tab, idx[h]), ms[h]);
                    a[h] = _mm256_add_epi16(a[h], v);
                }
            }
            if (j + 1) % flush == 0 {
                for (a, s) in a16.iter_mut().zip(acc.iter_mut()) {
                    for h in 0..2 {
                        // SAFETY: AVX2 available (caller).
                        unsafe { widen_add(&mut s[2 * h..2 * h + 2], a[h]) };
                        a[h] = zero;
                    }
                }
            }
        }
    }
    let mut negw = [[0i16; 16]; 2];
    for h in 0..2 {
        // SAFETY: 32 writable bytes.
        unsafe { _mm256_storeu_si256(negw[h].as_mut_ptr().cast(), neg[h]) };
    }
    for (px, s) in acc.iter().enumerate() {
        let mut v = [[0i32; 8]; 4];
        for (i, d) in v.iter_mut().enumerate() {
            // SAFETY: 32 writable bytes.
            unsafe { _mm256_storeu_si256(d.as_mut_ptr().cast(), s[i]) };
        }
        for (r, o) in out.iter_mut().enumerate() {
            // Row r: word r % 8 of half r / 8, in each 128-bit lane.
            let (h, w) = (r / 8, r % 8);
            let vv = &v[2 * h + (w & 1)];
            let sum = vv[w / 2] + vv[4 + w / 2];
            let ng = negw[h][w] as i32 + negw[h][8 + w] as i32;
            o[px] = o[px].wrapping_add(sum.wrapping_add(ng));
        }
    }
}

// SAFETY: X = u128, a primitive integer.
unsafe impl RowKernel for Lut {
    type In = i8;
    type X = u128;
    type Acc = i32;
    const PLANES: usize = 1;
    const ROWS: usize = 16;
    #[inline]
    fn put(slot: &mut [u128], _len: usize, i: usize, v: i8) -> bool {
        // Codes j and 16 + j of a 32-block are transposed into one
        // register (`transpose16`), so their tables go side by side.
        let pos = (i & !31) + 2 * (i & 15) + ((i >> 4) & 1);
        slot[pos] = LUT_TABLES[v as u8 as usize];
        true
    }
    unsafe fn dot<const B: u32, const NP: usize>(
        rows: &[&[u8]],
        kc: usize,
        xs: &[u128],
        stride: usize,
        out: &mut [[i32; NP]],
        _mode: u32,
    ) {
        // SAFETY: the caller guarantees AVX2/FMA/BMI2.
        unsafe { lut_rows::<B, NP>(rows, kc, xs, stride, out) }
    }
}

// --------------------------------------------------------------------------
// Entry points (the scalar signatures). Each panics if the CPU lacks
// AVX2/FMA/BMI2 (the `avxvnni/*` ones: the AVX-VNNI level).

/// `avx2/dot`: equal to [`crate::scalar::conv_shift_i8`].
pub fn conv_dot_i8(
    g: &Conv2dGeom,
    x: &[i8],
    w: &PackedRows,
    oc0: usize,
    rq: &[Requant],
    out: &mut [i8],
) {
    tile::shift_i8::<Dot<MADD>>(Isa::Avx2, g, x, w, oc0, rq, out)
}

/// `avxvnni/dot`: [`conv_dot_i8`] with `vpdpbusd` (AVX-VNNI, or AVX-512
/// VL + VNNI on `ymm` where the CPU lacks AVX-VNNI): one instruction for
/// the three of `vpmaddubsw` + `vpmaddwd` + `vpaddd`. Equal to
/// [`crate::scalar::conv_shift_i8`].
pub fn conv_dot_i8_avxvnni(
    g: &Conv2dGeom,
    x: &[i8],
    w: &PackedRows,
    oc0: usize,
    rq: &[Requant],
    out: &mut [i8],
) {
    if crate::dispatch::vnni_vex() {
        tile::shift_i8::<Dot<VEX>>(Isa::AvxVnni, g, x, w, oc0, rq, out)
    } else {
        tile::shift_i8::<Dot<EVEX>>(Isa::AvxVnni, g, x, w, oc0, rq, out)
    }
}

/// `avx2/shift`: equal to [`crate::scalar::conv_shift_i8`]; no multiply.
pub fn conv_shift_i8(
    g: &Conv2dGeom,
    x: &[i8],
    w: &PackedRows,
    oc0: usize,
    rq: &[Requant],
    out: &mut [i8],
) {
    tile::shift_i8::<Shift>(Isa::Avx2, g, x, w, oc0, rq, out)
}

/// `avx2/lut`: equal to [`crate::scalar::conv_shift_i8`]; no multiply.
pub fn conv_lut_i8(
    g: &Conv2dGeom,
    x: &[i8],
    w: &PackedRows,
    oc0: usize,
    rq: &[Requant],
    out: &mut [i8],
) {
    tile::shift_i8::<Lut>(Isa::Avx2, g, x, w, oc0, rq, out)
}

/// `avx2/w8`: equal to [`crate::scalar::conv_w8_i8`] (int8 weights).
pub fn conv_w8_i8(g: &Conv2dGeom, x: &[i8], w: &[i8], oc0: usize, rq: &[Requant], out: &mut [i8]) {
    tile::w8_i8::<Dot<MADD>>(Isa::Avx2, g, x, w, oc0, rq, out)
}

/// `avxvnni/w8`: [`conv_w8_i8`] with `vpdpbusd` (as [`conv_dot_i8_avxvnni`]).
pub fn conv_w8_i8_avxvnni(
    g: &Conv2dGeom,
    x: &[i8],
    w: &[i8],
    oc0: usize,
    rq: &[Requant],
    out: &mut [i8],
) {
    if crate::dispatch::vnni_vex() {
        tile::w8_i8::<Dot<VEX>>(Isa::AvxVnni, g, x, w, oc0, rq, out)
    } else {
        tile::w8_i8::<Dot<EVEX>>(Isa::AvxVnni, g, x, w, oc0, rq, out)
    }
}

/// `avx2/fexp`: [`crate::scalar::conv_shift_f32`] within the summation
/// bound; no multiply per MAC.
pub fn conv_fexp_f32(
    g: &Conv2dGeom,
    x: &[f32],
    w: &PackedRows,
    oc0: usize,
    ep: &[Affine],
    out: &mut [f32],
) {
    tile::shift_f32::<Fexp>(Isa::Avx2, g, x, w, oc0, ep, out)
}

super::depthwise_kernel!(Avx2, "avx2", "avx2/dw-shift", "avx2/dw-fexp");
