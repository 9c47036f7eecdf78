//! `neonfp16/fexp`: the `fexp` family in half precision, for aarch64 CPUs
//! with FEAT_FP16 (Armv8.2-A and later: Cortex-A55/A75/A76 and up,
//! Neoverse, Apple M). Opt-in: it changes results, so it runs only when
//! asked for ([`crate::dispatch::set_fp16`], `SHIFTNN_FP16=1`, the CLI's
//! `--fp16`), where ncnn turns its `use_fp16_arithmetic` on by default.
//!
//! Why: an f16 lane is half as wide, so one 16-bit exponent add, XOR and
//! mask serve 8 taps where the f32 kernel (`neon/fexp`) needs two vectors
//! of 4. Per 16 taps of one pixel: 2 loads of values, 2 of masks, 2 `and`,
//! 2 `add`, 2 `eor`, one `fadd .8h` (the f16 arithmetic: it sums the
//! two halves' terms pairwise), 2 `fcvtl` and 2 f32 `fadd`: 15
//! instructions against `neon/fexp`'s 24. No multiply.
//!
//! Numeric contract (what `tests/simd_equality.rs` asserts against an
//! f64 computation): each activation is rounded to f16 (relative error
//! `u = 2^-11`), its term `x * 2^p` is exact (exponent add), a pair of
//! terms is summed in f16 (one more rounding, relative `u`), and the pair
//! sums add up in f32. So
//! `|out - exact| <= (2^-10 + 2^-21 + n * 2^-23) * sum |x_i * w_i| +
//! sum_{|x_i| < 2^-14} |x_i * w_i|`:
//! activations below f16's normal range count as zero, as in f16
//! flush-to-zero arithmetic. Pixels with an activation of 256 or more
//! (where a pair sum could leave f16's range), a non-finite one or an f32
//! subnormal take the exact scalar path, like `neon/fexp`'s edge cases.

use core::arch::aarch64::*;
use core::arch::asm;

use super::neon::block;
use crate::dispatch::tile::{self, each_row, RowKernel};
use crate::dispatch::Isa;
use crate::scalar::Affine;
use crate::{Conv2dGeom, PackedRows};

/// Largest biased f16 exponent of an activation on the fast path: a
/// value below `2^8` times `2^7` (the largest code) stays below `2^15`,
/// so a sum of two such terms is finite (at most 65504).
const MAX_E16: u16 = 22;

/// Store activation `v` as f16 bits with an all-ones mask; nothing for a
/// zero or an activation below f16's normal range (flushed, see the
/// module's contract); `false` (exact scalar path) for one of `2^8` or
/// more, a non-finite one, or an f32 subnormal.
#[inline]
fn put16(slot: &mut [u16], len: usize, i: usize, v: f32) -> bool {
    let b = v.to_bits();
    let e32 = (b >> 23) & 0xff;
    if b & 0x7fff_ffff == 0 {
        return true;
    }
    if e32 == 0 || e32 == 0xff {
        return false;
    }
    let h = half::f16::from_f32(v).to_bits();
    let e = (h >> 10) & 0x1f;
    if e > MAX_E16 {
        return false;
    }
    if e != 0 {
        slot[i] = h;
        slot[len + i] = u16::MAX;
    }
    true
}

/// `a + b` on 8 f16 lanes (`fadd .8h`, FEAT_FP16). Stable Rust has no
/// f16 vector type yet, so the lanes travel as `u16` bits.
///
/// # Safety
/// The CPU has FEAT_FP16.
#[target_feature(enable = "fp16")]
#[inline]
unsafe fn fadd_8h(a: uint16x8_t, b: uint16x8_t) -> uint16x8_t {
    let s: uint16x8_t;
    // SAFETY: a register-only instruction of FEAT_FP16 (caller).
    unsafe {
        asm!(
            "fadd {s:v}.8h, {a:v}.8h, {b:v}.8h",
            s = lateout(vreg) s,
            a = in(vreg) a,
            b = in(vreg) b,
            options(pure, nomem, nostack, preserves_flags)
        );
    }
    s
}

/// The 8 f16 lanes of `h` widened to f32 (`fcvtl`, `fcvtl2`: exact).
#[target_feature(enable = "neon")]
#[inline]
unsafe fn widen(h: uint16x8_t) -> (float32x4_t, float32x4_t) {
    let (lo, hi): (float32x4_t, float32x4_t);
    // SAFETY: register-only conversions of base Armv8 Advanced SIMD.
    unsafe {
        asm!(
            "fcvtl {lo:v}.4s, {h:v}.4h",
            "fcvtl2 {hi:v}.4s, {h:v}.8h",
            lo = out(vreg) lo,
            hi = lateout(vreg) hi,
            h = in(vreg) h,
            options(pure, nomem, nostack, preserves_flags)
        );
    }
    (lo, hi)
}

struct Fexp;

/// One row's sums over a chunk for `NP` pixels.
///
/// # Safety
/// The CPU has FEAT_FP16; `xs` holds `NP` patches as [`RowKernel::dot`]
/// describes.
#[target_feature(enable = "neon,fp16")]
unsafe fn fexp_rows<const B: u32, const NP: usize>(
    codes: &[u8],
    kc: usize,
    xs: &[u16],
    stride: usize,
) -> [f32; NP] {
    let pmask = vdupq_n_u16((1 << (B - 1)) - 1);
    let sdown = vdupq_n_s16(-(B as i16 - 1));
    let mut acc = [[vdupq_n_f32(0.0); 2]; NP];
    let nblk = kc.div_ceil(16);
    let half = stride / 2;
    assert!(xs.len() >= (NP - 1) * stride + half + nblk * 16);
    let xp = xs.as_ptr();
    for blk in 0..nblk {
        // SAFETY: NEON available.
        let c = unsafe { block::<B>(codes, blk) };
        let c16 = [vmovl_u8(vget_low_u8(c)), vmovl_high_u8(c)];
        let pe = c16.map(|c| vshlq_n_u16::<10>(vandq_u16(c, pmask)));
        let sg = c16.map(|c| vshlq_n_u16::<15>(vshlq_u16(c, sdown)));
        for (j, a) in acc.iter_mut().enumerate() {
            let o = j * stride + blk * 16;
            // SAFETY: in bounds by the assert above.
            let (x0, x1, m0, m1) = unsafe {
                (
                    vld1q_u16(xp.add(o)),
                    vld1q_u16(xp.add(o + 8)),
                    vld1q_u16(xp.add(o + half)),
                    vld1q_u16(xp.add(o + half + 8)),
                )
            };
            let t0 = veorq_u16(vaddq_u16(x0, vandq_u16(pe[0], m0)), sg[0]);
            let t1 = veorq_u16(vaddq_u16(x1, vandq_u16(pe[1], m1)), sg[1]);
            // SAFETY: FEAT_FP16 (this function's contract).
            let (lo, hi) = unsafe { widen(fadd_8h(t0, t1)) };
            a[0] = vaddq_f32(a[0], lo);
            a[1] = vaddq_f32(a[1], hi);
        }
    }
    acc.map(|[a, b]| vaddvq_f32(vaddq_f32(a, b)))
}

// SAFETY: X = u16, a primitive integer.
unsafe impl RowKernel for Fexp {
    type In = f32;
    type X = u16;
    type Acc = f32;
    const PLANES: usize = 2;
    #[inline]
    fn put(slot: &mut [u16], len: usize, i: usize, v: f32) -> bool {
        put16(slot, len, i, v)
    }
    unsafe fn dot<const B: u32, const NP: usize>(
        rows: &[&[u8]],
        kc: usize,
        xs: &[u16],
        stride: usize,
        out: &mut [[f32; NP]],
        _mode: u32,
    ) {
        // SAFETY: `conv_fexp_f16` checked FEAT_FP16 before the driver
        // called this.
        each_row(rows, out, |c| unsafe {
            fexp_rows::<B, NP>(c, kc, xs, stride)
        })
    }
}

/// `neonfp16/fexp`: [`crate::scalar::conv_shift_f32`] within the f16
/// bound of this module's contract; no multiply per MAC. Panics if the
/// CPU lacks FEAT_FP16 ([`crate::dispatch::has_fp16`]).
pub fn conv_fexp_f16(
    g: &Conv2dGeom,
    x: &[f32],
    w: &PackedRows,
    oc0: usize,
    ep: &[Affine],
    out: &mut [f32],
) {
    assert!(
        crate::dispatch::has_fp16(),
        "neonfp16 kernel called on a CPU without FEAT_FP16"
    );
    tile::shift_f32::<Fexp>(Isa::Neon, g, x, w, oc0, ep, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The store's three outcomes, at the edges of f16's range.
    #[test]
    fn put16_ranges() {
        let mut s = [0u16; 2];
        let mut put = |v: f32| {
            s = [0; 2];
            (put16(&mut s, 1, 0, v), s)
        };
        assert_eq!(put(1.5), (true, [0x3e00, 0xffff]));
        assert_eq!(put(-255.5), (true, [0xdbfc, 0xffff]));
        assert_eq!(put(0.0), (true, [0, 0]));
        // Below f16's normal range: flushed.
        assert_eq!(put(-6.0e-5), (true, [0, 0]));
        assert_eq!(put(6.103_515_6e-5).1, [0x0400, 0xffff]);
        // Rounds to 256, or is larger; non-finite; f32 subnormal.
        for v in [255.99, 256.0, -1.0e9, f32::INFINITY, f32::NAN, 1.0e-40] {
            assert!(!put(v).0, "{v}");
        }
    }

    /// The largest fast-path activation against the largest weight: every
    /// pair sum is f16's largest finite value, 65504, not infinity. And
    /// the smallest, flushed.
    #[test]
    fn largest_and_smallest_activations() {
        if !crate::dispatch::has_fp16() {
            return;
        }
        let bits = crate::Bits::new(4).unwrap();
        let g = Conv2dGeom::linear(40, 3);
        // Code 7: +2^7 (`crate::codes`); 4 bits per code.
        let packed = vec![0x77u8; 3 * bits.row_bytes(40)];
        let w = PackedRows::new(&packed, bits, 3, 40).unwrap();
        let x = [255.9f32; 40];
        let mut out = [0f32; 3];
        conv_fexp_f16(&g, &x, &w, 0, &[Affine::IDENTITY; 3], &mut out);
        // 20 pairs of 255.875 * 128 (255.9 in f16), summed exactly in f32.
        assert_eq!(out, [20.0 * 65504.0; 3]);
        // Activations below f16's normal range count as zero: an exponent
        // add on a subnormal's bits would make 2^-7 of each.
        conv_fexp_f16(&g, &[3.0e-5; 40], &w, 0, &[Affine::IDENTITY; 3], &mut out);
        assert_eq!(out, [0.0; 3]);
    }
}
