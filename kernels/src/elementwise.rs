//! Int8 elementwise ops that vectorize: the input quantize and the
//! residual add, bit-identical to their [`crate::scalar`] references.
//!
//! The references are written for obviousness: [`scalar::quantize_i8`]
//! rounds every product through `f64` and [`scalar::add_i8`]
//! ([`AddRequant::apply`]) multiplies in `i64`. Neither vectorizes (no
//! packed `i64` multiply below AVX-512DQ, saturating `f64 -> i64`
//! conversions), which left them at ~1.2-1.5 ns per element in ResNet-18
//! once the convs got fast. The versions here compute the same functions
//! in `f32` and `i32` lanes, branch-free, so the compiler vectorizes them
//! at whatever width the ISA it is compiled for has; each function states
//! why it is exact, and `tests/elementwise_equality.rs` checks it
//! against the reference bit for bit on every level this CPU runs.
//!
//! [`quantize_i8`] and [`add_i8`] pick the level with
//! [`dispatch::isa`]; the `_at` variants take it explicitly (tests,
//! benchmarks). On x86-64 the portable bodies are compiled once more with
//! AVX2 and once with AVX-512 enabled; elsewhere (NEON is baseline on
//! aarch64) the portable build is the only one. The add on AVX-512 is
//! written out with intrinsics instead (`avx512_add`): the compiler's
//! version multiplied in 32-bit lanes, where `vpmaddwd` on 16-bit pairs
//! does it in half the instructions.

use crate::dispatch::{self, Isa};
use crate::scalar::{self, AddRequant};

/// `round(v * inv_scale)` as [`scalar::quantize_i8`] computes it, in `f32`.
///
/// Why this is exact: the reference forms the same `f32` product `q`,
/// then rounds `q as f64` half away from zero (`round_f64`: `q + 0.5`
/// cannot round in `f64` across an integer, because an `f32` `q` is at
/// least `2^-25` away from every half-integer it is not equal to) and
/// saturates to `-128 ..= 127`. Here:
/// * NaN goes to 0 first, as in the reference;
/// * `q` is clamped to `[-129, 128]`: rounding is monotone, so every `q`
///   below -129 (above 128) rounds to at most -129 (at least 128) and
///   saturates to the same -128 (127) as the clamped value does;
/// * in that range `t = trunc(q)` is exact and so is `f = q - t` (a
///   multiple of `q`'s ulp smaller than 1 in magnitude), and rounding half
///   away from zero is `t + 1` for `f >= 0.5`, `t - 1` for `f <= -0.5`.
///
/// No `f64`, no branch (the selects become vector compares and blends).
#[inline(always)]
fn quantize_one(v: f32, inv_scale: f32) -> i8 {
    let q = v * inv_scale;
    let q = if q.is_nan() { 0.0 } else { q };
    let q = if q < -129.0 { -129.0 } else { q };
    let q = if q > 128.0 { 128.0 } else { q };
    // Not `q as i32`: its saturation and NaN fix-ups kept the loop from
    // vectorizing (LLVM does not see that they cannot trigger here).
    // SAFETY: `q` is finite and in [-129, 128] (NaN and out-of-range
    // values were replaced above), so it truncates to an in-range i32.
    let t: i32 = unsafe { q.to_int_unchecked() };
    let f = q - t as f32;
    let r = t + (f >= 0.5) as i32 - (f <= -0.5) as i32;
    r.clamp(-128, 127) as i8
}

/// The portable quantize body; `#[inline(always)]` so that each per-ISA
/// wrapper compiles it with its own target features.
#[inline(always)]
fn quantize_body(x: &[f32], inv_scale: f32, out: &mut [i8]) {
    for (o, &v) in out.iter_mut().zip(x) {
        *o = quantize_one(v, inv_scale);
    }
}

/// [`AddRequant`] rewritten for `i32` lanes, for the requantizers the
/// fast path covers ([`AddSplit::new`]).
///
/// With the multipliers split at bit 16, `m = m_hi * 2^16 + m_lo`
/// (`m_hi = m >> 16` in `-2^15 .. 2^15`, `m_lo` in `0 .. 2^16`), and the
/// offset likewise, the reference's `i64` sum is
/// `S = (h + off_hi) * 2^16 + l` with
/// `h = a * ma_hi + b * mb_hi` (`|h| <= 2^23`) and
/// `l = a * ma_lo + b * mb_lo + off_lo` (`|l| < 2^25`), both exact in `i32`.
/// Flooring divisions compose, so
/// `S >> shift = (h + off_hi + (l >> 16)) >> (shift - 16)`, which stays in
/// `i32` when `|off_hi| <= 2^30`. The clamp is the reference's.
#[derive(Clone, Copy, Debug)]
struct AddSplit {
    ma_hi: i32,
    ma_lo: i32,
    mb_hi: i32,
    mb_lo: i32,
    off_hi: i32,
    off_lo: i32,
    /// `shift - 16`, in `0 ..= 31`.
    sh: u32,
    lo: i32,
    hi: i32,
}

impl AddSplit {
    /// The split of `rq`, or `None` when the fast path does not cover it:
    /// `shift` outside `16 ..= 47` or an offset beyond `±2^46` (never from
    /// [`AddRequant::from_real`], whose shift is 24 and offset `2^23`), or
    /// `lo > hi` (the reference panics; let it).
    fn new(rq: &AddRequant) -> Option<AddSplit> {
        if !(16..=47).contains(&rq.shift) || rq.lo > rq.hi {
            return None;
        }
        let off_hi = rq.offset >> 16;
        if off_hi.unsigned_abs() > 1 << 30 {
            return None;
        }
        Some(AddSplit {
            ma_hi: rq.ma >> 16,
            ma_lo: rq.ma & 0xffff,
            mb_hi: rq.mb >> 16,
            mb_lo: rq.mb & 0xffff,
            off_hi: off_hi as i32,
            off_lo: (rq.offset & 0xffff) as i32,
            sh: rq.shift - 16,
            lo: rq.lo as i32,
            hi: rq.hi as i32,
        })
    }

    /// [`AddRequant::apply`] of the requantizer this was split from.
    #[inline(always)]
    fn apply(&self, a: i8, b: i8) -> i8 {
        let (a, b) = (a as i32, b as i32);
        let h = a * self.ma_hi + b * self.mb_hi;
        let l = a * self.ma_lo + b * self.mb_lo + self.off_lo;
        let v = (h + self.off_hi + (l >> 16)) >> self.sh;
        // `lo <= hi` (checked in `new`): `clamp` without its assert.
        v.max(self.lo).min(self.hi) as i8
    }
}

/// The portable add body (see [`quantize_body`]).
#[inline(always)]
fn add_body(a: &[i8], b: &[i8], s: &AddSplit, out: &mut [i8]) {
    for ((o, &x), &y) in out.iter_mut().zip(a).zip(b) {
        *o = s.apply(x, y);
    }
}

/// [`AddRequant`] split for `vpmaddwd` (AVX-512BW's add, [`avx512_add`]):
/// the multipliers split at bit 15, `m = m_hi * 2^15 + m_lo` with both
/// halves in `i16` (`m_lo` in `0 .. 2^15`, `m_hi` needs `|m| < 2^30`), so
/// that one `vpmaddwd` of the interleaved words `(a, b)` forms
/// `h = a * ma_hi + b * mb_hi` and another
/// `l = a * ma_lo + b * mb_lo` (each below `2^23` in magnitude). As in
/// [`AddSplit`], `S >> shift = (h + off_hi + ((l + off_lo) >> 15)) >>
/// (shift - 15)`. Where [`AddSplit`] spends four 32-bit multiplies per
/// 16 outputs, this spends two `vpmaddwd`: one add of ResNet-18's 64 x
/// 56 x 56 tensors (min of 2000 calls, warm) went from 32.4 to 25.4 us.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy, Debug)]
struct AddPairs {
    /// `(ma_hi, mb_hi)` as the low and high word.
    m_hi: i32,
    /// `(ma_lo, mb_lo)` likewise.
    m_lo: i32,
    off_hi: i32,
    off_lo: i32,
    /// `shift - 15`, in `0 ..= 31`.
    sh: u32,
    lo: i8,
    hi: i8,
}

#[cfg(target_arch = "x86_64")]
impl AddPairs {
    /// The split of `rq`, or `None` outside its range: a multiplier of
    /// `2^30` or more in magnitude, `shift` outside `15 ..= 46`, an
    /// offset beyond `±2^45`, or `lo > hi`. [`AddRequant::from_real`]
    /// gives shift 24, offset `2^23` and multipliers below `2^30` for
    /// gains below 64.
    fn new(rq: &AddRequant) -> Option<AddPairs> {
        let fits = |m: i32| (-(1 << 30)..1 << 30).contains(&m);
        if !(15..=46).contains(&rq.shift) || rq.lo > rq.hi || !fits(rq.ma) || !fits(rq.mb) {
            return None;
        }
        let off_hi = rq.offset >> 15;
        if off_hi.unsigned_abs() > 1 << 30 {
            return None;
        }
        let pair = |a: i32, b: i32| (a as u16 as u32 | (b as u16 as u32) << 16) as i32;
        Some(AddPairs {
            m_hi: pair(rq.ma >> 15, rq.mb >> 15),
            m_lo: pair(rq.ma & 0x7fff, rq.mb & 0x7fff),
            off_hi: off_hi as i32,
            off_lo: (rq.offset & 0x7fff) as i32,
            sh: rq.shift - 15,
            lo: rq.lo,
            hi: rq.hi,
        })
    }
}

/// The residual add on AVX-512BW, 64 outputs per step (see
/// [`AddPairs`]). `vpunpck{l,h}wd` pair the words within each 128-bit
/// lane and `vpackssdw` undoes that order; `vpacksswb` interleaves the
/// two halves' lanes, which one `vpermq` puts back.
///
/// # Safety
/// AVX-512 F/BW available; `a`, `b` and `out` of equal length.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn avx512_add(a: &[i8], b: &[i8], s: &AddPairs, out: &mut [i8]) {
    use core::arch::x86_64::*;
    let n = out.len();
    let (mhi, mlo) = (_mm512_set1_epi32(s.m_hi), _mm512_set1_epi32(s.m_lo));
    let (offhi, offlo) = (_mm512_set1_epi32(s.off_hi), _mm512_set1_epi32(s.off_lo));
    let sh = _mm_cvtsi32_si128(s.sh as i32);
    let (lo, hi) = (_mm512_set1_epi8(s.lo), _mm512_set1_epi8(s.hi));
    let order = _mm512_set_epi64(7, 5, 3, 1, 6, 4, 2, 0);
    let mut i = 0;
    while i < n {
        let m = if n - i >= 64 {
            u64::MAX
        } else {
            (1u64 << (n - i)) - 1
        };
        // SAFETY: the enabled bytes are i .. min(i + 64, n), inside all
        // three slices (equal lengths, the caller).
        unsafe {
            let va = _mm512_maskz_loadu_epi8(m, a.as_ptr().add(i).cast());
            let vb = _mm512_maskz_loadu_epi8(m, b.as_ptr().add(i).cast());
            let k = (mhi, mlo, offhi, offlo, sh);
            let w0 = add_half(_mm512_castsi512_si256(va), _mm512_castsi512_si256(vb), k);
            let w1 = add_half(
                _mm512_extracti64x4_epi64::<1>(va),
                _mm512_extracti64x4_epi64::<1>(vb),
                k,
            );
            let y = _mm512_permutexvar_epi64(order, _mm512_packs_epi16(w0, w1));
            let y = _mm512_min_epi8(_mm512_max_epi8(y, lo), hi);
            let o = out.as_mut_ptr().add(i);
            if m == u64::MAX {
                // A plain store: the masked one halved the speed (Zen 4).
                _mm512_storeu_si512(o.cast(), y);
            } else {
                _mm512_mask_storeu_epi8(o, m, y);
            }
        }
        i += 64;
    }
}

/// 32 outputs of [`avx512_add`] as words, in order, from the bytes `va`
/// and `vb`; `k` is `(m_hi, m_lo, off_hi, off_lo, sh)` broadcast.
/// Saturating to `i16` clamps the same as clamping directly would.
/// (Always inlined, hence no target features of its own; a closure here
/// could be left out of line without them.)
///
/// # Safety
/// AVX-512 F/BW available.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn add_half(
    va: core::arch::x86_64::__m256i,
    vb: core::arch::x86_64::__m256i,
    k: AddConsts,
) -> core::arch::x86_64::__m512i {
    use core::arch::x86_64::*;
    let (mhi, mlo, offhi, offlo, sh) = k;
    // SAFETY (the intrinsics): the features are available (contract).
    unsafe {
        let (wa, wb) = (_mm512_cvtepi8_epi16(va), _mm512_cvtepi8_epi16(vb));
        let mut v = [_mm512_unpacklo_epi16(wa, wb), _mm512_unpackhi_epi16(wa, wb)];
        for v in &mut v {
            let l = _mm512_add_epi32(_mm512_madd_epi16(*v, mlo), offlo);
            let t = _mm512_add_epi32(_mm512_madd_epi16(*v, mhi), offhi);
            *v = _mm512_sra_epi32(_mm512_add_epi32(t, _mm512_srai_epi32::<15>(l)), sh);
        }
        _mm512_packs_epi32(v[0], v[1])
    }
}

/// The broadcast constants of [`avx512_add`].
#[cfg(target_arch = "x86_64")]
type AddConsts = (
    core::arch::x86_64::__m512i,
    core::arch::x86_64::__m512i,
    core::arch::x86_64::__m512i,
    core::arch::x86_64::__m512i,
    core::arch::x86_64::__m128i,
);

/// The bodies compiled for one x86-64 level.
#[cfg(target_arch = "x86_64")]
macro_rules! x86_level {
    ($m:ident, $features:literal) => {
        mod $m {
            use super::AddSplit;

            #[target_feature(enable = $features)]
            pub(super) fn quantize(x: &[f32], inv_scale: f32, out: &mut [i8]) {
                super::quantize_body(x, inv_scale, out)
            }

            #[target_feature(enable = $features)]
            pub(super) fn add(a: &[i8], b: &[i8], s: &AddSplit, out: &mut [i8]) {
                super::add_body(a, b, s, out)
            }
        }
    };
}
#[cfg(target_arch = "x86_64")]
x86_level!(avx2, "avx2");
#[cfg(target_arch = "x86_64")]
x86_level!(avx512, "avx512f,avx512bw,avx512vl");

/// What `inspect` and `bench` call the kernels of [`quantize_i8`] and
/// [`add_i8`] at the level [`dispatch::isa`] chooses: the x86 level they
/// are compiled for, else `portable` (the same bodies, vectorized by the
/// compiler for the target's baseline).
pub fn kernel_name() -> &'static str {
    match dispatch::isa() {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => "avx512",
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::AvxVnni => "avx2",
        _ => "portable",
    }
}

/// Quantize `f32` to int8: equal to [`scalar::quantize_i8`] for every
/// input (NaN to 0, saturating), at the level [`dispatch::isa`] chooses.
pub fn quantize_i8(x: &[f32], inv_scale: f32, out: &mut [i8]) {
    quantize_i8_at(dispatch::isa(), x, inv_scale, out)
}

/// [`quantize_i8`] built for level `isa` (levels without their own build,
/// such as `scalar` or `neon`, run the portable one). Panics if the CPU
/// lacks `isa`.
pub fn quantize_i8_at(isa: Isa, x: &[f32], inv_scale: f32, out: &mut [i8]) {
    assert_eq!(x.len(), out.len());
    assert!(isa.available(), "elementwise: CPU lacks {}", isa.name());
    match isa {
        // SAFETY: the CPU has the level (asserted above), which implies
        // the wrapper's target features.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { avx512::quantize(x, inv_scale, out) },
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::AvxVnni => unsafe { avx2::quantize(x, inv_scale, out) },
        _ => quantize_body(x, inv_scale, out),
    }
}

/// Int8 residual add: equal to [`scalar::add_i8`] for every input and
/// requantizer, at the level [`dispatch::isa`] chooses.
pub fn add_i8(a: &[i8], b: &[i8], rq: &AddRequant, out: &mut [i8]) {
    add_i8_at(dispatch::isa(), a, b, rq, out)
}

/// [`add_i8`] built for level `isa` (as [`quantize_i8_at`]). Requantizers
/// outside the `i32` rewrite's range (see `AddSplit`; never produced by
/// [`AddRequant::from_real`]) run the reference. Panics if the CPU lacks
/// `isa`.
pub fn add_i8_at(isa: Isa, a: &[i8], b: &[i8], rq: &AddRequant, out: &mut [i8]) {
    assert_eq!(a.len(), out.len());
    assert_eq!(b.len(), out.len());
    assert!(isa.available(), "elementwise: CPU lacks {}", isa.name());
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512 {
        if let Some(p) = AddPairs::new(rq) {
            // SAFETY: the CPU has the level (asserted above), which
            // implies AVX-512 F/BW; the lengths are equal (asserted).
            return unsafe { avx512_add(a, b, &p, out) };
        }
    }
    let Some(s) = AddSplit::new(rq) else {
        return scalar::add_i8(a, b, rq, out);
    };
    match isa {
        // SAFETY: the CPU has the level (asserted above), which implies
        // the wrapper's target features.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { avx512::add(a, b, &s, out) },
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::AvxVnni => unsafe { avx2::add(a, b, &s, out) },
        _ => add_body(a, b, &s, out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `(a, b)` pair for requantizers at the edges of the split:
    /// extreme multipliers (the `m_hi = -2^15` and `m_lo = 0xffff`
    /// corners), shifts 16 and 47, the offset bound.
    #[test]
    fn add_split_exhaustive_pairs() {
        let ms = [
            0,
            1,
            -1,
            0xffff,
            0x10000,
            -0x10000,
            1 << 24,
            (1 << 24) + 0x8000,
            i32::MAX,
            i32::MIN,
            i32::MIN + 1,
        ];
        let offsets = [0i64, 1 << 23, -(1 << 23), 1 << 46, -(1 << 46), 12345];
        for &ma in &ms {
            for &mb in &ms {
                for shift in [16, 24, 31, 47] {
                    for &offset in &offsets {
                        let rq = AddRequant {
                            ma,
                            mb,
                            shift,
                            offset,
                            lo: -128,
                            hi: 127,
                        };
                        let s = AddSplit::new(&rq).expect("covered");
                        for a in i8::MIN..=i8::MAX {
                            for b in [i8::MIN, -1, 0, 1, i8::MAX, a] {
                                assert_eq!(s.apply(a, b), rq.apply(a, b), "{rq:?} {a} {b}");
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn add_split_declines_what_it_cannot_do() {
        let base = AddRequant::from_real(0.5, 0.25, -128, 127);
        assert!(AddSplit::new(&base).is_some());
        for rq in [
            AddRequant { shift: 15, ..base },
            AddRequant { shift: 48, ..base },
            AddRequant {
                offset: (1 << 46) + (1 << 16),
                ..base
            },
            AddRequant {
                lo: 1,
                hi: 0,
                ..base
            },
        ] {
            assert!(AddSplit::new(&rq).is_none(), "{rq:?}");
        }
    }
}
