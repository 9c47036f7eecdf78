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

use rayon::prelude::*;
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

/// Lloyd search for one row: alternate nearest codes and least-squares
/// scale from a few starting scales; returns (squared error, scale, codes).
fn mse_row(bits: Bits, row: &[f32], amax: f64, amin: f64) -> (f64, f64, Vec<u8>) {
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
            let na = ls_scale(bits, row, &c);
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
    // The (b-1)-bit code set is a subset of the b-bit one at the same scale
    // (exponents 0..2^(b-2)-1), so its solution is a valid b-bit start. The
    // starts above all sit near amax / 2^pmax, i.e. they spend the wide
    // exponent range on tiny weights; at 4 bits that left whole channels
    // worse off than at 3 bits. Keeping the better of the two makes the
    // weight error monotone in the bit width.
    if let Some(lower) = Bits::new(bits.get() - 1) {
        let (_, la, lc) = mse_row(lower, row, amax, amin);
        let c: Vec<u8> = lc
            .iter()
            .map(|&cc| {
                let (neg, p) = lower.decode(cc);
                bits.encode(neg, p)
            })
            .collect();
        let err = sq_err(bits, row, la, &c);
        if err < best.0 {
            best = (err, la, c);
        }
    }
    best
}

/// Least-squares scale for fixed codes: `Σ w v / Σ v²`.
fn ls_scale(bits: Bits, row: &[f32], c: &[u8]) -> f64 {
    let (num, den) = row.iter().zip(c).fold((0f64, 0f64), |(n, d), (&w, &cc)| {
        let v = bits.value(cc) as f64;
        (n + w as f64 * v, d + v * v)
    });
    num / den
}

fn sq_err(bits: Bits, row: &[f32], a: f64, c: &[u8]) -> f64 {
    row.iter()
        .zip(c)
        .map(|(&w, &cc)| (w as f64 - a * bits.value(cc) as f64).powi(2))
        .sum()
}

/// Quantize `w` (`rows x k`, row-major) to `bits`-bit codes, minimizing the
/// squared weight error per row.
pub fn quantize_shift(w: &[f32], rows: usize, k: usize, bits: Bits) -> ShiftWeights {
    assert_eq!(w.len(), rows * k);
    // Rows are independent: fit them in parallel, then add up in row order
    // (the result does not depend on the thread count).
    let fits: Vec<(Vec<u8>, f32, f64, f64, bool)> = (0..rows)
        .into_par_iter()
        .map(|r| {
            let row = &w[r * k..(r + 1) * k];
            let amax = row.iter().fold(0f64, |m, &v| m.max((v as f64).abs()));
            let amin = row
                .iter()
                .filter(|v| **v != 0.0)
                .fold(f64::INFINITY, |m, &v| m.min((v as f64).abs()));
            let sig = row.iter().map(|&v| (v as f64).powi(2)).sum::<f64>();
            if amax == 0.0 || !amax.is_finite() {
                // An all-zero row has no exact code; the smallest possible
                // scale keeps its error negligible.
                let c = row.iter().map(|_| bits.encode(false, 0)).collect();
                return (c, f32::MIN_POSITIVE, sig, 0.0, false);
            }
            let (err, a, c) = mse_row(bits, row, amax, amin);
            // Exactness is judged per weight against the f32 scale we store.
            let a32 = a as f32;
            let exact = row.iter().zip(&c).all(|(&w, &cc)| {
                ((w as f64) - a32 as f64 * bits.value(cc) as f64).abs() <= EXACT_REL * amax
            });
            (c, a32, sig, err, exact)
        })
        .collect();
    let mut codes = Vec::with_capacity(w.len());
    let mut scales = Vec::with_capacity(rows);
    let (mut sig, mut noise) = (0f64, 0f64);
    let mut lossless = true;
    for (c, a, s, e, exact) in fits {
        codes.extend(c);
        scales.push(a);
        sig += s;
        noise += e;
        lossless &= exact;
    }
    ShiftWeights {
        codes,
        scales,
        sqnr_db: sqnr(sig, noise),
        lossless,
    }
}

fn sqnr(sig: f64, noise: f64) -> f64 {
    if noise <= sig * 1e-14 {
        f64::INFINITY
    } else {
        10.0 * (sig / noise).log10()
    }
}

/// Statistics of a layer's input on calibration data, per group of input
/// channels: the mean `μ` and the centred second moment (covariance) `C`
/// of the vectors one output value is computed from (conv: im2col patches
/// including zero padding; linear: input rows).
///
/// For a row `w` quantized to `q`, the layer output changes by `(q - w)·x`;
/// its mean `(q - w)·μ` is removed by bias correction, leaving the
/// variance `(w - q)ᵀ C (w - q)` as the output error to minimize.
#[derive(Clone, Debug)]
pub struct InputStats {
    /// Length of one input vector (the weight row length `k`).
    pub k: usize,
    /// Per group: mean, `k` values.
    pub mean: Vec<Vec<f64>>,
    /// Per group: covariance.
    pub cov: Vec<Cov>,
}

/// One group's input covariance `C`: dense, or, when there are at most
/// `k / 4` calibration vectors (a linear layer on a few inputs), the
/// centred vectors themselves, with which every product the weight search
/// needs costs O(nk) instead of O(k²) (a 4096-wide layer's search went from
/// minutes to seconds) and no `k x k` matrix is allocated.
#[derive(Clone, Debug)]
pub enum Cov {
    /// `k x k`, row-major.
    Dense(Vec<f64>),
    /// The centred vectors scaled by `1 / sqrt(n)`, as the `k x n`
    /// row-major matrix `Xᵀ` (so that `C = XᵀX` and a column of `X`,
    /// which the greedy search reads, is contiguous).
    Samples {
        /// `Xᵀ`, `k x n`.
        xt: Vec<f64>,
        /// Number of vectors.
        n: usize,
    },
}

impl Cov {
    /// `X e` of the sample form.
    fn project(xt: &[f64], n: usize, e: &[f64]) -> Vec<f64> {
        let mut y = vec![0.0; n];
        for (col, &ei) in xt.chunks_exact(n).zip(e) {
            if ei != 0.0 {
                for (yv, &xv) in y.iter_mut().zip(col) {
                    *yv += ei * xv;
                }
            }
        }
        y
    }

    /// `eᵀ C e`.
    pub fn quad(&self, k: usize, e: &[f64]) -> f64 {
        match self {
            Cov::Dense(c) => {
                let mut t = 0.0;
                for i in 0..k {
                    if e[i] != 0.0 {
                        t += e[i] * dot(&c[i * k..(i + 1) * k], e);
                    }
                }
                t
            }
            Cov::Samples { xt, n } => {
                let y = Self::project(xt, *n, e);
                dot(&y, &y)
            }
        }
    }

    /// `C v`.
    pub fn mul(&self, k: usize, v: &[f64]) -> Vec<f64> {
        match self {
            Cov::Dense(c) => (0..k).map(|i| dot(&c[i * k..(i + 1) * k], v)).collect(),
            Cov::Samples { xt, n } => {
                let y = Self::project(xt, *n, v);
                xt.chunks_exact(*n).map(|col| dot(col, &y)).collect()
            }
        }
    }

    /// `C[i][j]`.
    pub fn entry(&self, k: usize, i: usize, j: usize) -> f64 {
        match self {
            Cov::Dense(c) => c[i * k + j],
            Cov::Samples { xt, n } => dot(&xt[i * n..(i + 1) * n], &xt[j * n..(j + 1) * n]),
        }
    }
}

/// `C e` kept up to date while single entries of `e` change (the greedy
/// search): the vector itself for a dense `C`, `y = X e` for samples.
enum Grad<'a> {
    Dense {
        c: &'a [f64],
        g: Vec<f64>,
    },
    Samples {
        xt: &'a [f64],
        n: usize,
        y: Vec<f64>,
    },
}

impl<'a> Grad<'a> {
    fn new(cov: &'a Cov, k: usize, e: &[f64]) -> Self {
        match cov {
            Cov::Dense(c) => Grad::Dense {
                c,
                g: cov.mul(k, e),
            },
            Cov::Samples { xt, n } => Grad::Samples {
                xt,
                n: *n,
                y: Cov::project(xt, *n, e),
            },
        }
    }

    /// `(C e)_i`.
    fn get(&self, i: usize) -> f64 {
        match self {
            Grad::Dense { g, .. } => g[i],
            Grad::Samples { xt, n, y } => dot(&xt[i * n..(i + 1) * n], y),
        }
    }

    /// `e_i` dropped by `d`.
    fn apply(&mut self, k: usize, i: usize, d: f64) {
        match self {
            Grad::Dense { c, g } => {
                for (gj, cj) in g.iter_mut().zip(&c[i * k..(i + 1) * k]) {
                    *gj -= d * cj;
                }
            }
            Grad::Samples { xt, n, y } => {
                for (yv, &xv) in y.iter_mut().zip(&xt[i * *n..(i + 1) * *n]) {
                    *yv -= d * xv;
                }
            }
        }
    }
}

impl InputStats {
    /// Accumulates sums of `groups` groups of `k`-vectors; call
    /// [`InputStatsAcc::finish`] for the statistics.
    pub fn accumulator(groups: usize, k: usize) -> InputStatsAcc {
        InputStatsAcc {
            k,
            n: 0,
            sum: vec![vec![0.0; k]; groups],
            sxx: vec![Vec::new(); groups],
            samples: vec![Vec::new(); groups],
        }
    }

    /// Output error variance `eᵀ C e` of a weight error `e` in group `g`.
    pub fn output_err(&self, g: usize, e: &[f64]) -> f64 {
        self.cov[g].quad(self.k, e)
    }
}

/// Running sums for [`InputStats`].
#[derive(Clone, Debug)]
pub struct InputStatsAcc {
    k: usize,
    n: u64,
    sum: Vec<Vec<f64>>,
    /// Per group: the upper triangle of `Σ x xᵀ`, allocated once a group
    /// has more than `k / 4` vectors; until then empty.
    sxx: Vec<Vec<f64>>,
    /// Per group: the vectors themselves while there are at most `k / 4`.
    samples: Vec<Vec<f32>>,
}

impl InputStatsAcc {
    /// Adds one input vector for group `g` (`x.len() == k`). Every group
    /// must receive the same number of vectors (one per spatial position).
    pub fn add(&mut self, g: usize, x: &[f32]) {
        let k = self.k;
        debug_assert_eq!(x.len(), k);
        if g == 0 {
            self.n += 1;
        }
        for (s, &v) in self.sum[g].iter_mut().zip(x) {
            *s += v as f64;
        }
        if self.sxx[g].is_empty() {
            if self.samples[g].len() < (k / 4) * k {
                self.samples[g].extend_from_slice(x);
                return;
            }
            // Too many for the low-rank form: switch to the dense sums.
            self.sxx[g] = vec![0.0; k * k];
            let kept = core::mem::take(&mut self.samples[g]);
            for v in kept.chunks_exact(k) {
                add_outer(&mut self.sxx[g], k, v);
            }
        }
        add_outer(&mut self.sxx[g], k, x);
    }

    /// Number of vectors added (per group).
    pub fn count(&self) -> u64 {
        self.n
    }

    /// Means and covariances (`None` before any vector was added).
    pub fn finish(self) -> Option<InputStats> {
        if self.n == 0 {
            return None;
        }
        let k = self.k;
        let n = self.n as f64;
        let mut mean = Vec::new();
        let mut cov = Vec::new();
        for ((s, m), xs) in self.sum.into_iter().zip(self.sxx).zip(self.samples) {
            let mu: Vec<f64> = s.iter().map(|v| v / n).collect();
            if m.is_empty() {
                let r = n.sqrt().recip();
                let cnt = xs.len() / k;
                let mut xt = vec![0.0; k * cnt];
                for (s, v) in xs.chunks_exact(k).enumerate() {
                    for (i, (&a, m)) in v.iter().zip(&mu).enumerate() {
                        xt[i * cnt + s] = (a as f64 - m) * r;
                    }
                }
                mean.push(mu);
                cov.push(Cov::Samples { xt, n: cnt });
                continue;
            }
            let mut c = vec![0.0; k * k];
            for i in 0..k {
                for j in i..k {
                    let v = m[i * k + j] / n - mu[i] * mu[j];
                    c[i * k + j] = v;
                    c[j * k + i] = v;
                }
            }
            mean.push(mu);
            cov.push(Cov::Dense(c));
        }
        Some(InputStats { k, mean, cov })
    }
}

/// Adds the upper triangle of `x xᵀ` to `m` (`k x k`); mirrored in
/// [`InputStatsAcc::finish`].
fn add_outer(m: &mut [f64], k: usize, x: &[f32]) {
    for i in 0..k {
        let xi = x[i] as f64;
        if xi == 0.0 {
            // ReLU outputs and padding are often zero: skip the row.
            continue;
        }
        for (mj, &xj) in m[i * k + i..(i + 1) * k].iter_mut().zip(&x[i..]) {
            *mj += xi * xj as f64;
        }
    }
}

/// Result of [`quantize_shift_calibrated`].
#[derive(Clone, Debug)]
pub struct CalibratedShift {
    /// Codes and scales (and weight SQNR) of the chosen quantization.
    pub weights: ShiftWeights,
    /// Per output channel, the value to add to the layer's bias so the
    /// mean output on calibration data is unchanged (`(w - q)·μ`).
    pub bias_correction: Vec<f32>,
    /// Summed output error variance `Σ eᵀ C e` of the weight-MSE solution.
    pub output_err_mse: f64,
    /// The same for the chosen solution (never larger).
    pub output_err: f64,
    /// Summed output variance `Σ wᵀ C w` of the float layer (for an
    /// output SQNR).
    pub output_var: f64,
}

/// `Σ a_i b_i` with eight independent partial sums: the calibrated search
/// is O(k²) per trial, and a single running f64 sum (which the compiler
/// may not reorder) made it latency-bound, minutes on a ResNet-18.
fn dot(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f64; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f64 = ac
        .remainder()
        .iter()
        .zip(bc.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ac.zip(bc) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

fn values(bits: Bits, a: f64, c: &[u8]) -> impl Iterator<Item = f64> + '_ {
    c.iter().map(move |&cc| a * bits.value(cc) as f64)
}

/// Local search over codes: for each weight try the neighbouring exponents
/// (and the other sign at the smallest magnitude), keeping a change when it
/// lowers `eᵀ C e`. `g = C e` is kept up to date so each trial is O(1) and
/// each accepted change O(k) (the greedy variant of AdaRound's choice
/// between the two nearest grid points).
fn greedy_codes(bits: Bits, row: &[f32], cov: &Cov, a: f64, c: &mut [u8]) -> f64 {
    let k = row.len();
    let e: Vec<f64> = row
        .iter()
        .zip(values(bits, a, c))
        .map(|(&w, q)| w as f64 - q)
        .collect();
    let mut g = Grad::new(cov, k, &e);
    let mut err = cov.quad(k, &e);
    let diag: Vec<f64> = (0..k).map(|i| cov.entry(k, i, i)).collect();
    for _sweep in 0..8 {
        let mut changed = false;
        for i in 0..k {
            let (neg, p) = bits.decode(c[i]);
            let cur = bits.value(c[i]) as f64;
            let mut cands = [None; 3];
            if p > 0 {
                cands[0] = Some(bits.encode(neg, p - 1));
            } else {
                cands[0] = Some(bits.encode(!neg, 0));
            }
            if p < bits.max_exp() {
                cands[1] = Some(bits.encode(neg, p + 1));
            }
            let (gi, hii) = (g.get(i), diag[i]);
            let mut best = (0.0, None);
            for cand in cands.into_iter().flatten() {
                // The error e_i drops by d = a (v' - v): eᵀCe changes by
                // -2 d g_i + d² C_ii.
                let d = a * (bits.value(cand) as f64 - cur);
                let delta = -2.0 * d * gi + d * d * hii;
                if delta < best.0 {
                    best = (delta, Some((cand, d)));
                }
            }
            // A relative threshold keeps float noise from cycling.
            if let (delta, Some((cand, d))) = best {
                if delta < -1e-12 * err.abs().max(1e-300) {
                    c[i] = cand;
                    err += delta;
                    g.apply(k, i, d);
                    changed = true;
                }
            }
        }
        if !changed {
            break;
        }
    }
    err
}

fn out_err(bits: Bits, row: &[f32], cov: &Cov, a: f64, c: &[u8]) -> f64 {
    let e: Vec<f64> = row
        .iter()
        .zip(values(bits, a, c))
        .map(|(&w, q)| w as f64 - q)
        .collect();
    cov.quad(row.len(), &e)
}

/// Scale minimizing `(w - a v)ᵀ C (w - a v)` for fixed codes `v`.
fn cov_scale(bits: Bits, row: &[f32], cov: &Cov, c: &[u8]) -> f64 {
    let v: Vec<f64> = c.iter().map(|&cc| bits.value(cc) as f64).collect();
    let cv = cov.mul(row.len(), &v);
    let num: f64 = row.iter().zip(&cv).map(|(&w, x)| w as f64 * x).sum();
    let den: f64 = v.iter().zip(&cv).map(|(a, b)| a * b).sum();
    num / den
}

/// One row's outcome in [`quantize_shift_calibrated`].
struct RowResult {
    codes: Vec<u8>,
    scale: f32,
    bias: f32,
    sig: f64,
    noise: f64,
    err_mse: f64,
    err: f64,
    var: f64,
    exact: bool,
}

/// The search of [`quantize_shift_calibrated`] for one row (`codes` and
/// `a_mse`: its weight-MSE solution; `g`: its group's statistics).
fn calibrate_row(
    bits: Bits,
    row: &[f32],
    codes: &[u8],
    a_mse32: f32,
    stats: &InputStats,
    g: usize,
) -> RowResult {
    let cov = &stats.cov[g];
    let a_mse = a_mse32 as f64;
    let e_mse = out_err(bits, row, cov, a_mse, codes);
    let wf: Vec<f64> = row.iter().map(|&x| x as f64).collect();
    let var = stats.output_err(g, &wf);
    let amax = row.iter().fold(0f64, |m, &v| m.max((v as f64).abs()));
    let exact = row
        .iter()
        .zip(codes)
        .all(|(&x, &cc)| ((x as f64) - a_mse * bits.value(cc) as f64).abs() <= EXACT_REL * amax);
    let sig = wf.iter().map(|x| x * x).sum::<f64>();
    let keep = |exact| RowResult {
        codes: codes.to_vec(),
        scale: a_mse32,
        bias: 0.0,
        sig,
        noise: sq_err(bits, row, a_mse, codes),
        err_mse: e_mse,
        err: e_mse,
        var,
        exact,
    };
    if exact || !(a_mse > 0.0 && a_mse.is_finite()) || e_mse == 0.0 {
        return keep(exact);
    }
    let mut best = (e_mse, a_mse, codes.to_vec());
    // Scale grid: 2^(j/8) steps from a quarter to twice the MSE scale.
    for j in -16..=8 {
        let a = a_mse * (j as f64 / 8.0).exp2();
        let (_, c) = row_error(bits, row, a);
        let e = out_err(bits, row, cov, a, &c);
        if e < best.0 {
            best = (e, a, c);
        }
    }
    let (mut e, mut a, mut c) = best;
    for _ in 0..6 {
        let mut c2 = c.clone();
        let e2 = greedy_codes(bits, row, cov, a, &mut c2);
        let a2 = cov_scale(bits, row, cov, &c2);
        let (e3, a3) = if a2 > 0.0 && a2.is_finite() {
            let e3 = out_err(bits, row, cov, a2, &c2);
            if e3 < e2 {
                (e3, a2)
            } else {
                (e2, a)
            }
        } else {
            (e2, a)
        };
        if e3 < e * (1.0 - 1e-9) {
            (e, a, c) = (e3, a3, c2);
        } else {
            break;
        }
    }
    // The stored f32 scale, not the f64 one, defines the weights.
    let a32 = a as f32;
    let e32 = out_err(bits, row, cov, a32 as f64, &c);
    if e32 > e_mse {
        let mut r = keep(false);
        r.bias = bias_of(bits, row, a_mse, codes, &stats.mean[g]);
        return r;
    }
    let a = a32 as f64;
    RowResult {
        bias: bias_of(bits, row, a, &c, &stats.mean[g]),
        noise: sq_err(bits, row, a, &c),
        codes: c,
        scale: a32,
        sig,
        err_mse: e_mse,
        err: e32,
        var,
        exact: false,
    }
}

/// The bias correction `(w - q)·μ` of a row.
fn bias_of(bits: Bits, row: &[f32], a: f64, c: &[u8], mu: &[f64]) -> f32 {
    row.iter()
        .zip(values(bits, a, c))
        .zip(mu)
        .map(|((&x, q), m)| (x as f64 - q) * m)
        .sum::<f64>() as f32
}

/// Post-training quantization that minimizes each layer's *output* error on
/// calibration inputs instead of the weight error:
///
/// 1. start from the weight-MSE solution ([`quantize_shift`]);
/// 2. try per-channel scales on a log grid around it (codes nearest to
///    `w / a`), keeping the one with the lowest output error `eᵀ C e`;
/// 3. improve codes greedily ([`greedy_codes`]), refit the scale in closed
///    form for those codes, and repeat while the error drops;
/// 4. report the bias correction `(w - q)·μ` that removes the mean output
///    error.
///
/// Lossless rows (weights already `a * s * 2^p`) are kept as they are, so
/// DenseShift-trained models still convert exactly. `w` is `rows x k`;
/// output channel `r` belongs to group `r / (rows / groups)` of `stats`.
pub fn quantize_shift_calibrated(
    w: &[f32],
    rows: usize,
    k: usize,
    bits: Bits,
    stats: &InputStats,
) -> CalibratedShift {
    assert_eq!(w.len(), rows * k);
    assert_eq!(stats.k, k);
    let groups = stats.cov.len();
    assert!(groups > 0 && rows.is_multiple_of(groups));
    let base = quantize_shift(w, rows, k, bits);
    if base.lossless {
        return CalibratedShift {
            bias_correction: vec![0.0; rows],
            output_err_mse: 0.0,
            output_err: 0.0,
            output_var: (0..rows)
                .map(|r| {
                    let row: Vec<f64> = w[r * k..(r + 1) * k].iter().map(|&x| x as f64).collect();
                    stats.output_err(r / (rows / groups), &row)
                })
                .sum(),
            weights: base,
        };
    }
    // Rows are independent: search them in parallel, then add up the
    // figures in row order (the result does not depend on the threads).
    let per_row: Vec<RowResult> = (0..rows)
        .into_par_iter()
        .map(|r| {
            let g = r / (rows / groups);
            let row = &w[r * k..(r + 1) * k];
            let codes = &base.codes[r * k..(r + 1) * k];
            calibrate_row(bits, row, codes, base.scales[r], stats, g)
        })
        .collect();
    let mut codes = Vec::with_capacity(rows * k);
    let mut scales = Vec::with_capacity(rows);
    let mut bias_correction = Vec::with_capacity(rows);
    let (mut sig, mut noise) = (0f64, 0f64);
    let (mut err_mse, mut err_new, mut var) = (0f64, 0f64, 0f64);
    let mut lossless = true;
    for o in per_row {
        codes.extend_from_slice(&o.codes);
        scales.push(o.scale);
        bias_correction.push(o.bias);
        sig += o.sig;
        noise += o.noise;
        err_mse += o.err_mse;
        err_new += o.err;
        var += o.var;
        lossless &= o.exact;
    }
    CalibratedShift {
        weights: ShiftWeights {
            codes,
            scales,
            sqnr_db: sqnr(sig, noise),
            lossless,
        },
        bias_correction,
        output_err_mse: err_mse,
        output_err: err_new,
        output_var: var,
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

    /// Deterministic pseudo-random numbers in [-1, 1) (xorshift), so the
    /// tests need no extra crate.
    fn rng(seed: u64) -> impl FnMut() -> f32 {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        }
    }

    /// Correlated, non-negative (post-ReLU-like) inputs: a few shared
    /// factors plus noise, so the covariance is far from diagonal.
    fn correlated_inputs(k: usize, n: usize, seed: u64) -> Vec<Vec<f32>> {
        let mut r = rng(seed);
        let mix: Vec<f32> = (0..k * 3).map(|_| r()).collect();
        (0..n)
            .map(|_| {
                let f = [r(), r(), r()];
                (0..k)
                    .map(|i| {
                        let v = f[0] * mix[i * 3] + f[1] * mix[i * 3 + 1] + f[2] * mix[i * 3 + 2];
                        (v + 0.3 * r() + 0.2).max(0.0)
                    })
                    .collect()
            })
            .collect()
    }

    fn stats_of(xs: &[Vec<f32>], k: usize) -> InputStats {
        let mut acc = InputStats::accumulator(1, k);
        for x in xs {
            acc.add(0, x);
        }
        acc.finish().unwrap()
    }

    /// Mean squared output error of `rows x k` float weights against the
    /// quantized ones (plus bias correction) on the inputs themselves.
    fn empirical_out_mse(
        w: &[f32],
        q: &ShiftWeights,
        corr: &[f32],
        bits: Bits,
        xs: &[Vec<f32>],
        k: usize,
    ) -> f64 {
        let rows = w.len() / k;
        let mut tot = 0.0;
        for x in xs {
            for r in 0..rows {
                let (mut yf, mut yq) = (0f64, corr[r] as f64);
                for i in 0..k {
                    yf += w[r * k + i] as f64 * x[i] as f64;
                    yq += q.scales[r] as f64 * bits.value(q.codes[r * k + i]) as f64 * x[i] as f64;
                }
                tot += (yf - yq).powi(2);
            }
        }
        tot / xs.len() as f64
    }

    /// Few vectors (a linear layer on a few calibration inputs) keep the
    /// low-rank form; it holds the same covariance as the dense sums, and
    /// the calibrated search reaches the same output error either way.
    #[test]
    fn low_rank_stats_equal_dense() {
        let (k, rows, bits) = (64, 6, Bits::B4);
        let xs = correlated_inputs(k, 12, 3);
        let st = stats_of(&xs, k);
        assert!(matches!(st.cov[0], Cov::Samples { .. }));
        let dense = InputStats {
            k,
            mean: st.mean.clone(),
            cov: vec![Cov::Dense(
                (0..k * k)
                    .map(|t| st.cov[0].entry(k, t / k, t % k))
                    .collect(),
            )],
        };
        // The dense sums of the same vectors (more than k / 4 of them
        // switch the accumulator over) give the same matrix.
        let many: Vec<Vec<f32>> = xs.iter().cycle().take(6 * xs.len()).cloned().collect();
        let st_many = stats_of(&many, k);
        assert!(matches!(st_many.cov[0], Cov::Dense(_)));
        for i in 0..k {
            for j in 0..k {
                let (a, b) = (st.cov[0].entry(k, i, j), st_many.cov[0].entry(k, i, j));
                assert!((a - b).abs() <= 1e-9 * (1.0 + a.abs()), "{i} {j}: {a} {b}");
            }
        }
        let e: Vec<f64> = (0..k).map(|i| ((i * 7 % 11) as f64 - 5.0) / 3.0).collect();
        let (q1, q2) = (st.cov[0].quad(k, &e), dense.cov[0].quad(k, &e));
        assert!((q1 - q2).abs() <= 1e-9 * q2.abs().max(1.0), "{q1} {q2}");
        let w: Vec<f32> = (0..rows * k)
            .map(|i| (((i * 37) % 101) as f32 - 50.0) / 40.0)
            .collect();
        let a = quantize_shift_calibrated(&w, rows, k, bits, &st);
        let b = quantize_shift_calibrated(&w, rows, k, bits, &dense);
        assert!(a.output_err < a.output_err_mse, "the search must help");
        let rel = (a.output_err - b.output_err).abs() / b.output_err.max(1e-300);
        assert!(rel < 1e-6, "{} {}", a.output_err, b.output_err);
    }

    #[test]
    fn stats_match_direct_mean_and_covariance() {
        let k = 5;
        let xs = correlated_inputs(k, 300, 7);
        let st = stats_of(&xs, k);
        let n = xs.len() as f64;
        for i in 0..k {
            let mi: f64 = xs.iter().map(|x| x[i] as f64).sum::<f64>() / n;
            assert!((st.mean[0][i] - mi).abs() < 1e-9);
            for j in 0..k {
                let mj: f64 = xs.iter().map(|x| x[j] as f64).sum::<f64>() / n;
                let c: f64 = xs
                    .iter()
                    .map(|x| (x[i] as f64 - mi) * (x[j] as f64 - mj))
                    .sum::<f64>()
                    / n;
                assert!((st.cov[0].entry(k, i, j) - c).abs() < 1e-9, "{i} {j}");
            }
        }
    }

    #[test]
    fn calibrated_output_error_beats_weight_mse() {
        for bits in [Bits::B2, Bits::B3, Bits::B4] {
            let (rows, k) = (6, 72);
            let mut r = rng(11 + bits.get() as u64);
            let w: Vec<f32> = (0..rows * k).map(|_| r() * r() * 0.2).collect();
            let xs = correlated_inputs(k, 400, 3);
            let st = stats_of(&xs, k);
            let mse = quantize_shift(&w, rows, k, bits);
            let cal = quantize_shift_calibrated(&w, rows, k, bits, &st);
            // The reported figures are the empirical output errors on the
            // calibration inputs (old: no bias correction, new: with it).
            let e_old = empirical_out_mse(&w, &mse, &vec![0.0; rows], bits, &xs, k);
            let e_new = empirical_out_mse(&w, &cal.weights, &cal.bias_correction, bits, &xs, k);
            assert!(
                (cal.output_err - e_new).abs() <= 1e-6 * e_new.max(1e-12),
                "{bits:?}: reported {} measured {e_new}",
                cal.output_err
            );
            assert!(cal.output_err <= cal.output_err_mse, "{bits:?}");
            // Output-aware codes and scales plus bias correction must be a
            // clear gain on correlated inputs, not a tie.
            assert!(e_new < 0.8 * e_old, "{bits:?}: {e_new} vs {e_old}");
            assert!(!cal.weights.lossless);
        }
    }

    #[test]
    fn calibrated_keeps_exact_weights_exact() {
        let bits = Bits::B3;
        let (rows, k) = (3, 40);
        let mut r = rng(5);
        let scales = [0.013f32, 0.5, 3.0];
        let w: Vec<f32> = (0..rows * k)
            .map(|i| {
                let c = ((r() + 1.0) * 4.0) as u8 % 8;
                scales[i / k] * bits.value(c) as f32
            })
            .collect();
        let xs = correlated_inputs(k, 100, 9);
        let cal = quantize_shift_calibrated(&w, rows, k, bits, &stats_of(&xs, k));
        assert!(cal.weights.lossless);
        assert!(cal.bias_correction.iter().all(|&b| b == 0.0));
        for (i, &wi) in w.iter().enumerate() {
            let got = cal.weights.scales[i / k] * bits.value(cal.weights.codes[i]) as f32;
            assert_eq!(got, wi);
        }
    }

    #[test]
    fn weight_error_is_monotone_in_bits() {
        // b-1 bit codes are a subset of b-bit codes, so more bits must never
        // give a larger weight error.
        let mut r = rng(3);
        for trial in 0..40 {
            let k = 9 + trial * 7;
            let heavy = trial % 2 == 0;
            let w: Vec<f32> = (0..k)
                .map(|_| {
                    let v = r();
                    if heavy {
                        v * v * v
                    } else {
                        v
                    }
                })
                .collect();
            let err = |b: Bits| {
                let q = quantize_shift(&w, 1, k, b);
                sq_err(b, &w, q.scales[0] as f64, &q.codes)
            };
            let (e2, e3, e4) = (err(Bits::B2), err(Bits::B3), err(Bits::B4));
            assert!(
                e3 <= e2 * (1.0 + 1e-6) && e4 <= e3 * (1.0 + 1e-6),
                "{trial}: {e2} {e3} {e4}"
            );
        }
    }

    #[test]
    fn int8_roundtrip() {
        let w = [1.0f32, -0.5, 0.25, 0.0];
        let q = quantize_i8(&w, 1, 4);
        assert_eq!(q.q, vec![127, -64, 32, 0]);
    }
}
