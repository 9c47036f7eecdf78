//! Integer-only requantization: one per output, never per MAC.
//!
//! Everything that scales an int8 layer's accumulator — input and weight
//! scales, bias, BatchNorm (gamma, beta, mean, variance), the output
//! tensor's scale and a fused clamp — folds into a real affine map
//! `y = a * acc + b` per channel. [`Requant::from_real`] turns it into an
//! `i32` multiplier, a right shift and an `i64` offset once (at load, and
//! again when gamma/beta change); [`Requant::apply`] is then pure integer
//! arithmetic, so every ISA produces the same bits.
//!
//! Rounding rule: `y = clamp(floor((acc * mult + offset) / 2^shift))`
//! where `offset` carries `round(b * 2^shift) + 2^(shift-1)`; that is,
//! round half up (toward +inf) of `a * acc + b` up to the precision of the
//! 31-bit multiplier.

/// A per-channel integer requantizer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Requant {
    /// Signed multiplier, `|mult| < 2^31`.
    pub mult: i32,
    /// Right shift, `1 ..= 62`.
    pub shift: u32,
    /// Offset added before the shift (bias term plus the rounding half).
    pub offset: i64,
    /// Lower clamp (a fused ReLU sets it to 0).
    pub lo: i8,
    /// Upper clamp (a fused ReLU6 sets it to round(6 / scale)).
    pub hi: i8,
}

/// `2^e` as an f64, exact for `e` in -1022..=1023.
#[inline]
pub(crate) fn pow2(e: i32) -> f64 {
    f64::from_bits(((1023 + e) as u64) << 52)
}

/// Round half away from zero, saturating to the i64 range. Written out
/// because `f64::round` is not in `core`.
#[inline]
pub fn round_f64(x: f64) -> i64 {
    if x >= 0.0 {
        (x + 0.5) as i64
    } else {
        (x - 0.5) as i64
    }
}

/// Split `|a| > 0` finite into `f * 2^e` with `f` in [0.5, 1).
fn frexp(a: f64) -> (f64, i32) {
    let bits = a.abs().to_bits();
    let e = ((bits >> 52) & 0x7ff) as i32;
    if e == 0 {
        // Subnormal: scale up first.
        let (f, e2) = frexp(a.abs() * pow2(64));
        return (f, e2 - 64);
    }
    let f = f64::from_bits((bits & !(0x7ffu64 << 52)) | (1022u64 << 52));
    (f, e - 1022)
}

impl Requant {
    /// Largest shift; keeps `acc * mult + offset` inside i64.
    pub const MAX_SHIFT: u32 = 62;

    /// Requantizer for `y = clamp(a * acc + b, lo, hi)`. Non-finite `a` or
    /// `b` are the caller's bug; they are mapped to 0 here so this never
    /// panics.
    pub fn from_real(a: f64, b: f64, lo: i8, hi: i8) -> Requant {
        let a = if a.is_finite() { a } else { 0.0 };
        let b = if b.is_finite() { b } else { 0.0 };
        let (mult, shift) = Self::multiplier(a);
        // Keep the offset (and so acc * mult + offset) inside i64.
        let lim = pow2(61);
        let ob = (b * pow2(shift as i32)).clamp(-lim, lim);
        let offset = round_f64(ob) + (1i64 << (shift - 1));
        Requant {
            mult,
            shift,
            offset,
            lo,
            hi,
        }
    }

    /// `a ≈ mult * 2^-shift` with a 31-bit `|mult|` where the range allows.
    pub fn multiplier(a: f64) -> (i32, u32) {
        if a == 0.0 || !a.is_finite() {
            return (0, 31);
        }
        let (f, mut e) = frexp(a);
        let mut m = round_f64(f * pow2(31));
        if m == 1i64 << 31 {
            m /= 2;
            e += 1;
        }
        let mut shift = 31 - e;
        if shift > Self::MAX_SHIFT as i32 {
            m = round_f64(a.abs() * pow2(Self::MAX_SHIFT as i32));
            shift = Self::MAX_SHIFT as i32;
        } else if shift < 1 {
            // |a| >= 2^30: no int8 layer has such a gain; saturate.
            m = i32::MAX as i64;
            shift = 1;
        }
        let m = if a < 0.0 { -m } else { m };
        (m as i32, shift as u32)
    }

    /// The real gain this requantizer applies.
    pub fn gain(&self) -> f64 {
        self.mult as f64 * pow2(-(self.shift as i32))
    }

    /// Requantize one accumulator.
    #[inline]
    pub fn apply(&self, acc: i32) -> i8 {
        let v = (acc as i64 * self.mult as i64).saturating_add(self.offset) >> self.shift;
        v.clamp(self.lo as i64, self.hi as i64) as i8
    }

    /// [`Requant::apply`] over a run of accumulators (one channel, several
    /// pixels): the same bits, with the overflow test hoisted out of the
    /// loop. `|acc * mult| <= 2^62`, so with `|offset| < 2^62` (nearly
    /// every offset [`Requant::from_real`] makes) the sum stays inside i64 and
    /// the saturating add is a plain one; the epilogue is a tenth of a conv
    /// layer's time on wide-channel layers, so its instructions count.
    /// Always inlined, so that it compiles with the caller's target
    /// features: out of line it stayed baseline x86-64 code and took 47%
    /// of a 56x56 depthwise layer.
    #[inline(always)]
    pub fn apply_run(&self, acc: &[i32], out: &mut [i8]) {
        if self.offset.unsigned_abs() < 1 << 62 {
            let (m, o, s) = (self.mult as i64, self.offset, self.shift);
            let (lo, hi) = (self.lo as i64, self.hi as i64);
            for (y, &a) in out.iter_mut().zip(acc) {
                *y = ((a as i64 * m + o) >> s).clamp(lo, hi) as i8;
            }
        } else {
            for (y, &a) in out.iter_mut().zip(acc) {
                *y = self.apply(a);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multiplier_is_accurate() {
        for &a in &[
            1.0,
            0.5,
            0.75,
            1e-3,
            3.3e-7,
            123.456,
            -0.0421,
            1e-12,
            2.0f64.powi(29),
        ] {
            let (m, s) = Requant::multiplier(a);
            let back = m as f64 * pow2(-(s as i32));
            assert!(
                (back - a).abs() <= a.abs() * 1e-9 + pow2(-62),
                "a={a} back={back}"
            );
            assert!((1..=62).contains(&s));
        }
    }

    #[test]
    fn apply_run_equals_apply_at_the_extremes() {
        let accs = [
            i32::MIN,
            i32::MIN + 1,
            -65_536,
            -1,
            0,
            1,
            4_096,
            i32::MAX - 1,
            i32::MAX,
        ];
        let offsets = [
            i64::MIN,
            -(1 << 62) - 1,
            -(1 << 62),
            -(1 << 62) + 1,
            -12_345,
            0,
            1 << 40,
            (1 << 62) - 1,
            1 << 62,
            (1 << 62) + 1,
            i64::MAX,
        ];
        for mult in [
            i32::MIN,
            i32::MIN + 1,
            -(1 << 30),
            -3,
            0,
            1,
            77,
            (1 << 30) + 5,
            i32::MAX,
        ] {
            for shift in [1, 7, 31, 61, 62] {
                for offset in offsets {
                    for (lo, hi) in [(-128, 127), (0, 127), (0, 6)] {
                        let r = Requant {
                            mult,
                            shift,
                            offset,
                            lo,
                            hi,
                        };
                        let mut got = [0i8; 9];
                        r.apply_run(&accs, &mut got);
                        let want = accs.map(|a| r.apply(a));
                        assert_eq!(got, want, "{r:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn apply_rounds_half_up_and_clamps() {
        let r = Requant::from_real(0.5, 0.0, -128, 127);
        assert_eq!(r.apply(1), 1); // 0.5 -> 1
        assert_eq!(r.apply(-1), 0); // -0.5 -> 0 (half up)
        assert_eq!(r.apply(3), 2); // 1.5 -> 2
        assert_eq!(r.apply(1000), 127);
        assert_eq!(r.apply(-1000), -128);
        let relu = Requant::from_real(1.0, -2.25, 0, 127);
        assert_eq!(relu.apply(1), 0);
        assert_eq!(relu.apply(5), 3); // 2.75 -> 3
    }

    #[test]
    fn matches_real_affine_on_a_grid() {
        let cases = [(0.013, 3.7), (-0.0007, -11.2), (2.5, 0.0), (1e-5, 100.0)];
        for (a, b) in cases {
            let r = Requant::from_real(a, b, -128, 127);
            for acc in (-200_000..200_000).step_by(997) {
                let want = (a * acc as f64 + b).clamp(-1e9, 1e9);
                let want = round_f64(want - 0.5 + 0.5).clamp(-128, 127);
                let got = r.apply(acc) as i64;
                assert!(
                    (got - want).abs() <= 1,
                    "a={a} b={b} acc={acc} got={got} want={want}"
                );
            }
        }
    }

    #[test]
    fn extreme_inputs_never_panic() {
        for &a in &[f64::NAN, f64::INFINITY, 1e300, -1e300, 1e-300, 0.0] {
            for &b in &[f64::NAN, 1e300, -1e300, 0.0] {
                let r = Requant::from_real(a, b, -128, 127);
                for acc in [i32::MIN, -1, 0, 1, i32::MAX] {
                    let _ = r.apply(acc);
                }
            }
        }
    }
}
