//! Weight quantization: float weights to zero-free shift codes with a
//! per-output-channel scale (post-training), or to int8 per channel for
//! layers kept at higher precision.
//!
//! For a row `w` and a scale `a`, the best code of each weight is the value
//! `±2^p` nearest to `w/a`; for fixed codes the best scale is the
//! least-squares `a = Σ w v / Σ v²`. Alternating the two (Lloyd) from a few
//! starting scales and keeping the lowest squared error gives the
//! per-channel PTQ. Weights that already are `a * s * 2^p` (DenseShift
//! training) reach zero error and are reported as lossless.

use shiftnn_kernels::Bits;

/// Result of quantizing one weight matrix (`rows x k`) to shift codes.
#[derive(Clone, Debug)]
pub struct ShiftWeights {
    /// One code per weight, row-major.
    pub codes: Vec<u8>,
    /// Per-row (output channel) scale.
    pub scales: Vec<f32>,
    /// Signal-to-quantization-noise ratio over the whole matrix, dB
    /// (`inf` when exact).
    pub sqnr_db: f64,
    /// Every weight is reproduced to float rounding.
    pub lossless: bool,
}

/// Relative tolerance under which a weight counts as exactly representable
/// (f32 rounding of `scale * 2^p` in the exporter).
const EXACT_REL: f64 = 1e-6;

fn code_for(bits: Bits, w: f32, a: f64) -> u8 {
    let x = if a > 0.0 { (w as f64 / a).abs() } else { 0.0 };
    // Linear-nearest power of two: the midpoint between 2^p and 2^(p+1) is
    // 1.5 * 2^p.
    let mut p = 0u32;
    while p < bits.max_exp() && x > 1.5 * (1u64 << p) as f64 {
        p += 1;
    }
    bits.encode(w < 0.0, p)
}

fn row_error(bits: Bits, row: &[f32], a: f64) -> (f64, Vec<u8>) {
    let codes: Vec<u8> = row.iter().map(|&w| code_for(bits, w, a)).collect();
    let err = row
        .iter()
        .zip(&codes)
        .map(|(&w, &c)| (w as f64 - a * bits.value(c) as f64).powi(2))
        .sum();
    (err, codes)
}

/// Quantize `w` (`rows x k`, row-major) to `bits`-bit codes.
pub fn quantize_shift(w: &[f32], rows: usize, k: usize, bits: Bits) -> ShiftWeights {
    assert_eq!(w.len(), rows * k);
    let mut codes = Vec::with_capacity(w.len());
    let mut scales = Vec::with_capacity(rows);
    let (mut sig, mut noise) = (0f64, 0f64);
    let mut lossless = true;
    for r in 0..rows {
        let row = &w[r * k..(r + 1) * k];
        let amax = row.iter().fold(0f64, |m, &v| m.max((v as f64).abs()));
        let amin = row
            .iter()
            .filter(|v| **v != 0.0)
            .fold(f64::INFINITY, |m, &v| m.min((v as f64).abs()));
        sig += row.iter().map(|&v| (v as f64).powi(2)).sum::<f64>();
        if amax == 0.0 || !amax.is_finite() {
            // An all-zero row has no exact code; the smallest possible
            // scale keeps its error negligible.
            scales.push(f32::MIN_POSITIVE);
            codes.extend(row.iter().map(|_| bits.encode(false, 0)));
            lossless = false;
            continue;
        }
        let top = (1u64 << bits.max_exp()) as f64;
        let mut starts = vec![amax / top, amin];
        for f in [0.5, 0.6, 0.7, 0.8, 0.9, 1.2, 1.5] {
            starts.push(amax / top * f);
        }
        let mut best = (f64::INFINITY, 0f64, Vec::new());
        for a0 in starts {
            if !(a0 > 0.0 && a0.is_finite()) {
                continue;
            }
            let mut a = a0;
            let (mut err, mut c) = row_error(bits, row, a);
            for _ in 0..20 {
                let (num, den) = row.iter().zip(&c).fold((0f64, 0f64), |(n, d), (&w, &cc)| {
                    let v = bits.value(cc) as f64;
                    (n + w as f64 * v, d + v * v)
                });
                let na = num / den;
                // Also stops on NaN (an all-zero code row cannot happen, but
                // a degenerate row must not loop on garbage).
                if na.is_nan() || na <= 0.0 {
                    break;
                }
                let (ne, nc) = row_error(bits, row, na);
                if ne >= err {
                    break;
                }
                (a, err, c) = (na, ne, nc);
            }
            if err < best.0 {
                best = (err, a, c);
            }
        }
        let (err, a, c) = best;
        // Exactness is judged per weight against the f32 scale we store.
        let a32 = a as f32;
        let exact = row.iter().zip(&c).all(|(&w, &cc)| {
            ((w as f64) - a32 as f64 * bits.value(cc) as f64).abs() <= EXACT_REL * amax
        });
        lossless &= exact;
        noise += err;
        scales.push(a32);
        codes.extend(c);
    }
    let sqnr_db = if noise <= sig * 1e-14 {
        f64::INFINITY
    } else {
        10.0 * (sig / noise).log10()
    };
    ShiftWeights {
        codes,
        scales,
        sqnr_db,
        lossless,
    }
}

/// Int8 per-channel weights for kept layers.
#[derive(Clone, Debug)]
pub struct Int8Weights {
    /// Quantized weights, row-major.
    pub q: Vec<i8>,
    /// Per-row scale (`w ≈ scale * q`).
    pub scales: Vec<f32>,
    /// SQNR, dB.
    pub sqnr_db: f64,
}

/// Symmetric per-channel int8 quantization.
pub fn quantize_i8(w: &[f32], rows: usize, k: usize) -> Int8Weights {
    let mut q = Vec::with_capacity(w.len());
    let mut scales = Vec::with_capacity(rows);
    let (mut sig, mut noise) = (0f64, 0f64);
    for r in 0..rows {
        let row = &w[r * k..(r + 1) * k];
        let amax = row.iter().fold(0f32, |m, &v| m.max(v.abs()));
        let s = if amax > 0.0 && amax.is_finite() {
            amax / 127.0
        } else {
            1.0
        };
        for &v in row {
            let qi = (v / s).round().clamp(-127.0, 127.0) as i8;
            sig += (v as f64).powi(2);
            noise += (v as f64 - s as f64 * qi as f64).powi(2);
            q.push(qi);
        }
        scales.push(s);
    }
    let sqnr_db = if noise <= sig * 1e-14 {
        f64::INFINITY
    } else {
        10.0 * (sig / noise).log10()
    };
    Int8Weights { q, scales, sqnr_db }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_shift_weights_are_lossless() {
        let bits = Bits::B3;
        let scales = [0.013f32, 0.5, 3.0];
        let mut w = Vec::new();
        for &s in &scales {
            for i in 0..37 {
                let v = bits.value(((i * 5 + 3) % 8) as u8) as f32;
                w.push(s * v);
            }
        }
        let q = quantize_shift(&w, 3, 37, bits);
        assert!(q.lossless, "sqnr {}", q.sqnr_db);
        assert!(q.sqnr_db.is_infinite());
        for r in 0..3 {
            for i in 0..37 {
                let got = q.scales[r] * bits.value(q.codes[r * 37 + i]) as f32;
                assert_eq!(got, w[r * 37 + i]);
            }
        }
    }

    #[test]
    fn exact_weights_without_top_exponent_are_lossless() {
        // Only exponents 1 and 2 used: scale ambiguity must still be exact.
        let w = [0.2f32, -0.4, 0.4, -0.2, 0.2];
        let q = quantize_shift(&w, 1, 5, Bits::B3);
        assert!(q.lossless);
    }

    #[test]
    fn ptq_error_is_small_and_reported() {
        let w: Vec<f32> = (0..256).map(|i| (i as f32 * 0.37).sin() * 0.1).collect();
        let q3 = quantize_shift(&w, 4, 64, Bits::B3);
        let q4 = quantize_shift(&w, 4, 64, Bits::B4);
        let q2 = quantize_shift(&w, 4, 64, Bits::B2);
        assert!(!q3.lossless);
        assert!(
            q2.sqnr_db < q3.sqnr_db && q3.sqnr_db <= q4.sqnr_db + 1e-9,
            "{} {} {}",
            q2.sqnr_db,
            q3.sqnr_db,
            q4.sqnr_db
        );
        assert!(q3.sqnr_db > 8.0, "{}", q3.sqnr_db);
    }

    #[test]
    fn int8_roundtrip() {
        let w = [1.0f32, -0.5, 0.25, 0.0];
        let q = quantize_i8(&w, 1, 4);
        assert_eq!(q.q, vec![127, -64, 32, 0]);
    }
}
