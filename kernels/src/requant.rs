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

/// A per-channel integer requantizer. Built by [`Requant::new`] or
/// [`Requant::from_real`], which also derive its accumulator window
/// ([`Requant::window`]); its fields are read-only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Requant {
    pub(crate) mult: i32,
    pub(crate) shift: u32,
    pub(crate) offset: i64,
    pub(crate) lo: i8,
    pub(crate) hi: i8,
    /// See [`Requant::window`]; `None` in a `Default` one.
    window: Option<(i32, i32)>,
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
        Requant::new(mult, shift, offset, lo, hi)
    }

    /// The requantizer `y = clamp((acc * mult + offset) >> shift, lo, hi)`
    /// ([`Requant::apply`]); `shift` is clamped to `1 ..= 62`.
    pub fn new(mult: i32, shift: u32, offset: i64, lo: i8, hi: i8) -> Requant {
        let mut r = Requant {
            mult,
            shift: shift.clamp(1, Self::MAX_SHIFT),
            offset,
            lo,
            hi,
            window: None,
        };
        r.window = r.derive_window();
        r
    }

    /// Signed multiplier, `|mult| < 2^31`.
    pub fn mult(&self) -> i32 {
        self.mult
    }

    /// Right shift, `1 ..= 62`.
    pub fn shift(&self) -> u32 {
        self.shift
    }

    /// Offset added before the shift (bias term plus the rounding half).
    pub fn offset(&self) -> i64 {
        self.offset
    }

    /// Lower clamp (a fused ReLU sets it to 0).
    pub fn lo(&self) -> i8 {
        self.lo
    }

    /// Upper clamp (a fused ReLU6 sets it to round(6 / scale)).
    pub fn hi(&self) -> i8 {
        self.hi
    }

    /// The accumulator window `(c0, c1)`, where there is one: for every
    /// `acc`, `apply(acc)` equals the unclamped
    /// `(clamp(acc, c0, c1) * mult + offset) >> shift`, because that map
    /// already lands in `lo ..= hi` on the window and reaches `lo` and
    /// `hi` at its ends. SIMD epilogues clamp the 16 accumulators of a vector in
    /// 32-bit lanes then, instead of the results in two 64-bit halves.
    /// `None` (use the output clamp) for offsets of 2^62 or more, gains
    /// above 1 whose steps skip `lo` or `hi`, and maps that never enter
    /// the clamp range.
    pub fn window(&self) -> Option<(i32, i32)> {
        self.window
    }

    fn derive_window(&self) -> Option<(i32, i32)> {
        if self.offset.unsigned_abs() >= 1 << 62 {
            return None;
        }
        let f = |acc: i32| (acc as i64 * self.mult as i64 + self.offset) >> self.shift;
        let (lo, hi) = (self.lo as i64, self.hi as i64);
        if lo > hi {
            return None;
        }
        // f is monotonic: non-decreasing for mult >= 0, else
        // non-increasing. c0 is the first acc whose f is inside lo ..= hi
        // from below (above), c1 the last.
        let up = self.mult >= 0;
        let inside_low = |a: i32| if up { f(a) >= lo } else { f(a) <= hi };
        let inside_high = |a: i32| if up { f(a) <= hi } else { f(a) >= lo };
        // Smallest a with p(a), for p false then true over i32.
        let first = |p: &dyn Fn(i32) -> bool| -> Option<i32> {
            if !p(i32::MAX) {
                return None;
            }
            let (mut a, mut b) = (i32::MIN as i64, i32::MAX as i64);
            while a < b {
                let m = a + (b - a) / 2;
                if p(m as i32) {
                    b = m;
                } else {
                    a = m + 1;
                }
            }
            Some(a as i32)
        };
        let c0 = first(&inside_low)?;
        // Last a with inside_high: one before the first a without it.
        let c1 = match first(&|a| !inside_high(a)) {
            None => i32::MAX,
            Some(i32::MIN) => return None,
            Some(a) => a - 1,
        };
        let (end0, end1) = if up { (lo, hi) } else { (hi, lo) };
        let ok = c0 <= c1 && (c0 == i32::MIN || f(c0) == end0) && (c1 == i32::MAX || f(c1) == end1);
        ok.then_some((c0, c1))
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

    /// Multipliers at and near the ends of their range, and small ones.
    const MULTS: [i32; 9] = [
        i32::MIN,
        i32::MIN + 1,
        -(1 << 30),
        -3,
        0,
        1,
        77,
        (1 << 30) + 5,
        i32::MAX,
    ];

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
        for mult in MULTS {
            for shift in [1, 7, 31, 61, 62] {
                for offset in offsets {
                    for (lo, hi) in [(-128, 127), (0, 127), (0, 6)] {
                        let r = Requant::new(mult, shift, offset, lo, hi);
                        let mut got = [0i8; 9];
                        r.apply_run(&accs, &mut got);
                        let want = accs.map(|a| r.apply(a));
                        assert_eq!(got, want, "{r:?}");
                    }
                }
            }
        }
    }

    /// The window's promise, on the accumulators where it can break: the
    /// i32 ends, the window's ends and their neighbours, and a spread.
    #[test]
    fn window_equals_apply() {
        let mut seen = 0;
        let mut none = 0;
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut check = |r: Requant| {
            let Some((c0, c1)) = r.window() else {
                none += 1;
                return;
            };
            seen += 1;
            let f = |a: i32| {
                let a = a.clamp(c0, c1) as i64;
                (a * r.mult as i64 + r.offset) >> r.shift
            };
            let near = [c0, c1].into_iter().flat_map(|c| {
                [-2i64, -1, 0, 1, 2]
                    .map(|d| (c as i64 + d).clamp(i32::MIN as i64, i32::MAX as i64) as i32)
            });
            let ends = [i32::MIN, i32::MIN + 1, -1, 0, 1, i32::MAX - 1, i32::MAX];
            for a in near.chain(ends).chain((-4000..4000).map(|i| i * 997)) {
                let y = f(a);
                assert!(
                    (r.lo as i64..=r.hi as i64).contains(&y),
                    "{r:?} acc={a} -> {y}"
                );
                assert_eq!(y as i8, r.apply(a), "{r:?} acc={a}");
            }
        };
        for _ in 0..3000 {
            // Gains in +-(0, 4) over eight decades; offsets within +-100.
            let a = (next() % 8001) as f64 / 1000.0 - 4.0;
            let a = a * 10f64.powi(-((next() % 8) as i32));
            let b = (next() % 2001) as f64 / 10.0 - 100.0;
            let (lo, hi) = [(-128, 127), (0, 127), (0, 6), (-3, -3)][(next() % 4) as usize];
            let r = Requant::from_real(a, b, lo, hi);
            // A gain of at most 1 steps through every output value.
            assert!(a.abs() > 1.0 || r.window().is_some(), "{r:?}");
            check(r);
        }
        for mult in MULTS {
            for shift in [1, 7, 31, 61, 62] {
                for offset in [-(1 << 61), -12_345, 0, 1 << 40, (1 << 61) - 1] {
                    for (lo, hi) in [(-128, 127), (0, 127), (0, 6)] {
                        check(Requant::new(mult, shift, offset, lo, hi));
                    }
                }
            }
        }
        // Typical gains have a window; gains above 1 may not.
        assert!(seen > 2500 && none > 0, "window on {seen}, none on {none}");
        assert!(Requant::from_real(0.0123, -4.5, 0, 127).window().is_some());
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
