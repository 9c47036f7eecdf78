//! Float-mode weight application without a multiplier: `x * (s * 2^p)` as an
//! integer add of `p` to the exponent field and an XOR of the sign bit.
//!
//! The fast path covers normal numbers whose result stays normal. The edges
//! are exact too: a zero stays a (signed) zero, a subnormal is renormalised
//! by shifting its mantissa, an exponent that overflows becomes infinity,
//! and infinities and NaNs pass through with the sign applied. The result is
//! always exactly `x * s * 2^p` as IEEE-754 defines it (the product of a
//! float and a power of two is exact unless it overflows).

const EXP_MASK: u32 = 0x7f80_0000;
const SIGN: u32 = 0x8000_0000;
const MANT: u32 = 0x007f_ffff;

/// `x * (±2^p)`: `negative` flips the sign. Exact; no multiply.
#[inline]
pub fn mul_pow2(x: f32, negative: bool, p: u32) -> f32 {
    let bits = x.to_bits() ^ ((negative as u32) << 31);
    let e = (bits & EXP_MASK) >> 23;
    // Fast path: normal input and normal result (biased exponent 1..=254).
    if e != 0 && e + p < 255 {
        return f32::from_bits(bits + (p << 23));
    }
    slow(bits, e, p)
}

#[cold]
fn slow(bits: u32, e: u32, p: u32) -> f32 {
    let sign = bits & SIGN;
    if e == 0xff {
        // inf or NaN: unchanged but for the sign already applied.
        return f32::from_bits(bits);
    }
    if e != 0 {
        // Normal input whose exponent overflows.
        return f32::from_bits(sign | EXP_MASK);
    }
    let m = bits & MANT;
    if m == 0 {
        return f32::from_bits(sign);
    }
    // Subnormal: value m * 2^-149. Shifting the mantissa left by `lz`
    // brings its leading one to the implicit bit (bit 23).
    let lz = m.leading_zeros() - 8;
    if p < lz {
        return f32::from_bits(sign | (m << p));
    }
    // Normal result: (m << lz) * 2^(p - lz - 149), biased exponent p - lz + 1.
    let ne = p - lz + 1;
    if ne >= 255 {
        return f32::from_bits(sign | EXP_MASK);
    }
    f32::from_bits(sign | (ne << 23) | ((m << lz) & MANT))
}

/// Apply a `b`-bit code to `x` (see [`crate::codes`]).
#[inline]
pub fn apply_code(x: f32, bits: crate::Bits, code: u8) -> f32 {
    let (neg, p) = bits.decode(code);
    mul_pow2(x, neg, p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(x: f32, neg: bool, p: u32) {
        let want = x * if neg { -1.0 } else { 1.0 } * (1u64 << p) as f32;
        let got = mul_pow2(x, neg, p);
        if want.is_nan() {
            assert!(got.is_nan());
        } else {
            assert_eq!(
                got.to_bits(),
                want.to_bits(),
                "x={x:e} ({:#x}) neg={neg} p={p}",
                x.to_bits()
            );
        }
    }

    #[test]
    fn edges_are_exact() {
        let xs = [
            0.0f32,
            -0.0,
            1.0,
            -1.5,
            f32::MIN_POSITIVE,
            f32::MIN_POSITIVE / 2.0,
            f32::from_bits(1),
            f32::from_bits(0x0040_0000),
            f32::from_bits(0x0000_ffff),
            f32::MAX,
            f32::MAX / 16.0,
            -f32::MAX,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            3.0e38,
            1.0e-40,
        ];
        for &x in &xs {
            for p in 0..=7 {
                check(x, false, p);
                check(x, true, p);
            }
        }
    }

    #[test]
    fn random_bit_patterns_are_exact() {
        let mut s = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..200_000 {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let x = f32::from_bits(s as u32);
            check(x, s >> 40 & 1 == 1, ((s >> 41) & 7) as u32);
        }
    }
}
