//! CEMA sample selection on a softmax probability vector (no_std).
//!
//! Each prediction `p` over `C` classes is scored by its entropy
//! `E(p) = -sum_i p_i ln p_i / ln C` (so `E` lies in `[0, 1]`), then checked
//! by three rules, in this order; a sample is counted under the first rule
//! it fails:
//!
//! 1. **unreliable**: `E > E_max`. `E_max` is [`SelectConfig::e_max`]
//!    (0.4) for the first [`SelectConfig::warmup`] samples; after that it is
//!    the running mean entropy of all samples seen so far, times
//!    [`SelectConfig::dynamic_scale`] (CEMA's dynamic threshold). The
//!    threshold that judges a sample is computed from the samples before
//!    it; the sample then joins the running mean.
//! 2. **low-informative**: `E < E_min` ([`SelectConfig::e_min`], 0.02).
//! 3. **redundant** (EATA): `|cos(p, m)| >= d` ([`SelectConfig::redundancy`],
//!    0.05), where `m` is a moving average of the *selected* predictions:
//!    the first [`SelectConfig::m_init`] selected samples set `m` to their
//!    plain mean (nothing is redundant until then), each later one
//!    `m = (1 - mu) m + mu p` with `mu` = [`SelectConfig::m_momentum`] (0.1,
//!    EATA's 0.9/0.1 update).
//!
//! EATA starts `m` from the mean of a first batch (64 images), not from
//! one prediction. A stream has no batches; starting `m` from one sample
//! (`m_init = 1`) locks the rule when a shift makes the model predict one
//! class for most inputs: the first such prediction becomes `m`, every
//! later one is redundant, `m` never moves again (only selected samples
//! update it), and the device uploads almost nothing. Seen in
//! `shiftnn adapt-demo` on the contrast stream: 2.5 % uploaded, no
//! adaptation.
//!
//! Selecting allocates nothing; [`Selector::new`] allocates `m` once.

use alloc::{vec, vec::Vec};

/// Every threshold of the selection.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SelectConfig {
    /// Initial `E_max` (units of ln C), used during warm-up.
    pub e_max: f32,
    /// `E_min` (units of ln C).
    pub e_min: f32,
    /// Samples seen before `E_max` follows the running mean entropy.
    pub warmup: u64,
    /// Follow the running mean after warm-up (`false`: `E_max` is fixed).
    pub dynamic: bool,
    /// Factor applied to the running mean to give the dynamic `E_max`.
    pub dynamic_scale: f32,
    /// Running mean window: 0 is the plain mean of all samples seen; `n > 0`
    /// weighs the new sample by `max(1/seen, 1/n)` (a mean that becomes an
    /// exponential moving average with time constant `n`).
    pub mean_window: u64,
    /// Redundancy margin `d` on `|cos(p, m)|`; 1.0 or more disables the rule.
    pub redundancy: f32,
    /// Weight of a new selected prediction in `m`.
    pub m_momentum: f32,
    /// Selected samples whose plain mean initializes `m` (at least 1; EATA
    /// initializes from a batch of 64).
    pub m_init: u64,
}

impl Default for SelectConfig {
    fn default() -> Self {
        SelectConfig {
            e_max: 0.4,
            e_min: 0.02,
            warmup: 100,
            dynamic: true,
            dynamic_scale: 1.0,
            mean_window: 0,
            redundancy: 0.05,
            m_momentum: 0.1,
            m_init: 64,
        }
    }
}

/// What the selector decided for one sample.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Worth uploading.
    Selected,
    /// `E > E_max`.
    Unreliable,
    /// `E < E_min`.
    LowInformative,
    /// `|cos(p, m)| >= d`.
    Redundant,
    /// Wrong length, empty, negative or non-finite probabilities.
    Invalid,
}

/// The decision with the numbers behind it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Verdict {
    /// The decision.
    pub decision: Decision,
    /// Entropy in units of ln C (NaN for invalid input).
    pub entropy: f32,
    /// The `E_max` the sample was judged against.
    pub e_max: f32,
    /// `|cos(p, m)|` when the redundancy rule was evaluated.
    pub cos: Option<f32>,
}

/// Counters, exposed for reports and telemetry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SelectStats {
    /// Samples offered.
    pub seen: u64,
    /// Samples selected.
    pub selected: u64,
    /// Excluded as unreliable.
    pub unreliable: u64,
    /// Excluded as low-informative.
    pub low_informative: u64,
    /// Excluded as redundant.
    pub redundant: u64,
    /// Rejected as invalid input.
    pub invalid: u64,
}

/// Entropy of a probability vector in units of `ln C` (`0 ln 0 = 0`);
/// 0 for `C <= 1`.
pub fn entropy(p: &[f32]) -> f32 {
    if p.len() <= 1 {
        return 0.0;
    }
    let mut h = 0f64;
    for &x in p {
        if x > 0.0 {
            h -= x as f64 * libm::log(x as f64);
        }
    }
    (h / libm::log(p.len() as f64)) as f32
}

/// Softmax in place (max-subtracted), for callers holding logits.
pub fn softmax(x: &mut [f32]) {
    let mx = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f32;
    for v in x.iter_mut() {
        *v = libm::expf(*v - mx);
        sum += *v;
    }
    for v in x.iter_mut() {
        *v /= sum;
    }
}

/// `cos(a, b)`, 0 when either is the zero vector.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let (mut ab, mut aa, mut bb) = (0f64, 0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        ab += x as f64 * y as f64;
        aa += x as f64 * x as f64;
        bb += y as f64 * y as f64;
    }
    if aa == 0.0 || bb == 0.0 {
        return 0.0;
    }
    (ab / libm::sqrt(aa * bb)) as f32
}

/// The stateful CEMA selector for one stream of `C`-class predictions.
#[derive(Clone, Debug)]
pub struct Selector {
    cfg: SelectConfig,
    classes: usize,
    m: Vec<f32>,
    /// Selected samples averaged into `m` so far (saturates at `m_init`).
    m_count: u64,
    mean_entropy: f64,
    /// Valid samples that fed the running mean.
    counted: u64,
    stats: SelectStats,
}

impl Selector {
    /// A selector for `classes`-way predictions.
    pub fn new(cfg: SelectConfig, classes: usize) -> Selector {
        Selector {
            cfg,
            classes,
            m: vec![0.0; classes],
            m_count: 0,
            mean_entropy: 0.0,
            counted: 0,
            stats: SelectStats::default(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &SelectConfig {
        &self.cfg
    }

    /// Counters so far.
    pub fn stats(&self) -> SelectStats {
        self.stats
    }

    /// Running mean entropy of the valid samples seen (units of ln C).
    pub fn mean_entropy(&self) -> f32 {
        self.mean_entropy as f32
    }

    /// The moving average of selected predictions, once set.
    pub fn moving_average(&self) -> Option<&[f32]> {
        (self.m_count > 0).then_some(&self.m[..])
    }

    /// The `E_max` the next sample will be judged against.
    pub fn e_max(&self) -> f32 {
        if self.cfg.dynamic && self.counted >= self.cfg.warmup && self.counted > 0 {
            self.mean_entropy as f32 * self.cfg.dynamic_scale
        } else {
            self.cfg.e_max
        }
    }

    /// Judge one softmax probability vector and update the state.
    pub fn observe(&mut self, p: &[f32]) -> Verdict {
        self.stats.seen += 1;
        let e_max = self.e_max();
        if p.len() != self.classes || p.is_empty() || p.iter().any(|x| !x.is_finite() || *x < 0.0) {
            self.stats.invalid += 1;
            return Verdict {
                decision: Decision::Invalid,
                entropy: f32::NAN,
                e_max,
                cos: None,
            };
        }
        let e = entropy(p);
        self.counted += 1;
        let w = match self.cfg.mean_window {
            0 => 1.0 / self.counted as f64,
            n => (1.0 / self.counted as f64).max(1.0 / n as f64),
        };
        self.mean_entropy += w * (e as f64 - self.mean_entropy);
        let mut verdict = Verdict {
            decision: Decision::Selected,
            entropy: e,
            e_max,
            cos: None,
        };
        if e > e_max {
            self.stats.unreliable += 1;
            verdict.decision = Decision::Unreliable;
            return verdict;
        }
        if e < self.cfg.e_min {
            self.stats.low_informative += 1;
            verdict.decision = Decision::LowInformative;
            return verdict;
        }
        if self.m_count >= self.cfg.m_init.max(1) {
            let c = libm::fabsf(cosine(p, &self.m));
            verdict.cos = Some(c);
            if c >= self.cfg.redundancy {
                self.stats.redundant += 1;
                verdict.decision = Decision::Redundant;
                return verdict;
            }
            let mu = self.cfg.m_momentum;
            for (m, &x) in self.m.iter_mut().zip(p) {
                *m = (1.0 - mu) * *m + mu * x;
            }
        } else {
            self.m_count += 1;
            let w = 1.0 / self.m_count as f32;
            for (m, &x) in self.m.iter_mut().zip(p) {
                *m += w * (x - *m);
            }
        }
        self.stats.selected += 1;
        verdict
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> SelectConfig {
        SelectConfig {
            dynamic: false,
            redundancy: 2.0, // off unless a test turns it on
            ..SelectConfig::default()
        }
    }

    #[test]
    fn entropy_hand_computed() {
        assert_eq!(entropy(&[0.25; 4]), 1.0);
        assert_eq!(entropy(&[1.0, 0.0, 0.0, 0.0]), 0.0);
        // [0.5, 0.5, 0, 0]: ln 2 / ln 4 = 0.5 exactly.
        assert!((entropy(&[0.5, 0.5, 0.0, 0.0]) - 0.5).abs() < 1e-7);
        assert_eq!(entropy(&[1.0]), 0.0);
    }

    #[test]
    fn cosine_hand_computed() {
        assert!((cosine(&[1.0, 0.0], &[0.0, 1.0])).abs() < 1e-7);
        assert!((cosine(&[1.0, 1.0], &[1.0, 0.0]) - core::f32::consts::FRAC_1_SQRT_2).abs() < 1e-7);
        assert_eq!(cosine(&[0.0, 0.0], &[1.0, 0.0]), 0.0);
    }

    #[test]
    fn softmax_sums_to_one() {
        let mut x = [1.0, 2.0, 3.0];
        softmax(&mut x);
        assert!((x.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(x[2] > x[1] && x[1] > x[0]);
    }

    #[test]
    fn unreliable_rule() {
        let mut s = Selector::new(cfg(), 4);
        // Uniform: E = 1 > 0.4.
        let v = s.observe(&[0.25; 4]);
        assert_eq!(v.decision, Decision::Unreliable);
        assert_eq!(v.entropy, 1.0);
        assert_eq!(v.e_max, 0.4);
        // E = 0.5 > 0.4 still unreliable.
        assert_eq!(
            s.observe(&[0.5, 0.5, 0.0, 0.0]).decision,
            Decision::Unreliable
        );
        let st = s.stats();
        assert_eq!((st.seen, st.unreliable, st.selected), (2, 2, 0));
    }

    #[test]
    fn low_informative_rule() {
        let mut s = Selector::new(cfg(), 4);
        assert_eq!(
            s.observe(&[1.0, 0.0, 0.0, 0.0]).decision,
            Decision::LowInformative
        );
        // p = [0.999, 0.001, 0, 0]: E = -(0.999 ln 0.999 + 0.001 ln 0.001)/ln 4
        // = (0.0009995 + 0.0069078)/1.3862944 = 0.005704 < 0.02.
        let v = s.observe(&[0.999, 0.001, 0.0, 0.0]);
        assert!((v.entropy - 0.005704).abs() < 1e-5, "{}", v.entropy);
        assert_eq!(v.decision, Decision::LowInformative);
        assert_eq!(s.stats().low_informative, 2);
    }

    #[test]
    fn selected_between_thresholds() {
        let mut s = Selector::new(cfg(), 4);
        // [0.9, 0.1, 0, 0]: E = (0.094824 + 0.230259)/1.386294 = 0.234499.
        let v = s.observe(&[0.9, 0.1, 0.0, 0.0]);
        assert!((v.entropy - 0.234499).abs() < 1e-5);
        assert_eq!(v.decision, Decision::Selected);
        assert_eq!(s.moving_average().unwrap(), &[0.9, 0.1, 0.0, 0.0]);
    }

    #[test]
    fn redundancy_rule_and_moving_average() {
        let c = SelectConfig {
            redundancy: 0.05,
            m_init: 1,
            ..cfg()
        };
        let mut s = Selector::new(c, 4);
        let a = [0.9, 0.1, 0.0, 0.0];
        assert_eq!(s.observe(&a).decision, Decision::Selected); // sets m = a
                                                                // Same prediction again: cos = 1 -> redundant; m unchanged.
        let v = s.observe(&a);
        assert_eq!(v.decision, Decision::Redundant);
        assert!((v.cos.unwrap() - 1.0).abs() < 1e-6);
        // Orthogonal to m: cos = 0 < 0.05 -> selected, m = 0.9 m + 0.1 b.
        let b = [0.0, 0.0, 0.9, 0.1];
        let v = s.observe(&b);
        assert_eq!(v.decision, Decision::Selected);
        assert_eq!(v.cos, Some(0.0));
        let m = s.moving_average().unwrap();
        let want = [0.81, 0.09, 0.09, 0.01];
        for (x, y) in m.iter().zip(want) {
            assert!((x - y).abs() < 1e-6, "{m:?}");
        }
        // [0, 0, 0.9, 0.1] against m: cos = (0.081 + 0.001)/(|b| |m|)
        // = 0.082 / (0.905539 * 0.82) = 0.110431 >= 0.05 -> redundant.
        let v = s.observe(&b);
        assert!((v.cos.unwrap() - 0.110431).abs() < 1e-5, "{:?}", v.cos);
        assert_eq!(v.decision, Decision::Redundant);
        let st = s.stats();
        assert_eq!((st.seen, st.selected, st.redundant), (4, 2, 2));
    }

    #[test]
    fn m_starts_from_the_mean_of_the_first_selected_samples() {
        let c = SelectConfig {
            redundancy: 0.95,
            m_init: 4,
            ..cfg()
        };
        let mut s = Selector::new(c, 4);
        // A stream dominated by class 0: with m_init = 1 the first sample
        // would make every later class-0 prediction redundant.
        let a = [0.9, 0.1, 0.0, 0.0];
        let b = [0.0, 0.1, 0.9, 0.0];
        for p in [a, a, a, b] {
            assert_eq!(s.observe(&p).decision, Decision::Selected);
        }
        let want = [0.675, 0.1, 0.225, 0.0];
        let m = s.moving_average().unwrap();
        for (x, y) in m.iter().zip(want) {
            assert!((x - y).abs() < 1e-6, "{m:?}");
        }
        // cos(a, m) = 0.6175 / (0.905539 * 0.718506) = 0.949 < 0.95: still
        // selected, so the dominant class keeps reaching the cloud.
        let v = s.observe(&a);
        assert!((v.cos.unwrap() - 0.949075).abs() < 1e-4, "{:?}", v.cos);
        assert_eq!(v.decision, Decision::Selected);

        // The same stream with m_init = 1 locks after one sample.
        let mut s1 = Selector::new(SelectConfig { m_init: 1, ..c }, 4);
        assert_eq!(s1.observe(&a).decision, Decision::Selected);
        for _ in 0..3 {
            assert_eq!(s1.observe(&a).decision, Decision::Redundant);
        }
    }

    #[test]
    fn first_failing_rule_counts() {
        // Uniform prediction with e_min above it: unreliable wins (rule 1).
        let c = SelectConfig {
            e_min: 0.9,
            ..cfg()
        };
        let mut s = Selector::new(c, 4);
        assert_eq!(s.observe(&[0.25; 4]).decision, Decision::Unreliable);
        assert_eq!(s.stats().low_informative, 0);
    }

    #[test]
    fn dynamic_threshold_follows_running_mean_after_warmup() {
        let c = SelectConfig {
            dynamic: true,
            warmup: 2,
            ..cfg()
        };
        let mut s = Selector::new(c, 4);
        // Warm-up: judged against 0.4.
        let v1 = s.observe(&[0.25; 4]); // E = 1
        assert_eq!((v1.e_max, v1.decision), (0.4, Decision::Unreliable));
        let v2 = s.observe(&[0.5, 0.5, 0.0, 0.0]); // E = 0.5
        assert_eq!((v2.e_max, v2.decision), (0.4, Decision::Unreliable));
        // After 2 samples: E_max = mean(1, 0.5) = 0.75, so E = 0.5 passes.
        assert!((s.e_max() - 0.75).abs() < 1e-6);
        let v3 = s.observe(&[0.5, 0.5, 0.0, 0.0]);
        assert!((v3.e_max - 0.75).abs() < 1e-6);
        assert_eq!(v3.decision, Decision::Selected);
        // Mean is now (1 + 0.5 + 0.5)/3 = 2/3.
        assert!((s.e_max() - 2.0 / 3.0).abs() < 1e-6);
        // E = 1 > 2/3: unreliable; mean becomes 3/4.
        assert_eq!(s.observe(&[0.25; 4]).decision, Decision::Unreliable);
        assert!((s.mean_entropy() - 0.75).abs() < 1e-6);
    }

    #[test]
    fn dynamic_scale_and_window() {
        let c = SelectConfig {
            dynamic: true,
            warmup: 1,
            dynamic_scale: 0.5,
            mean_window: 2,
            ..cfg()
        };
        let mut s = Selector::new(c, 4);
        s.observe(&[0.25; 4]); // mean = 1 (weight 1)
        assert!((s.e_max() - 0.5).abs() < 1e-6);
        s.observe(&[1.0, 0.0, 0.0, 0.0]); // weight max(1/2, 1/2): mean = 0.5
        s.observe(&[1.0, 0.0, 0.0, 0.0]); // weight max(1/3, 1/2): mean = 0.25
        assert!((s.mean_entropy() - 0.25).abs() < 1e-6);
        assert!((s.e_max() - 0.125).abs() < 1e-6);
    }

    #[test]
    fn invalid_inputs_are_counted_not_judged() {
        let mut s = Selector::new(cfg(), 4);
        assert_eq!(s.observe(&[0.5, 0.5]).decision, Decision::Invalid);
        assert_eq!(
            s.observe(&[f32::NAN, 0.0, 0.0, 1.0]).decision,
            Decision::Invalid
        );
        assert_eq!(
            s.observe(&[-0.1, 0.6, 0.5, 0.0]).decision,
            Decision::Invalid
        );
        let st = s.stats();
        assert_eq!((st.seen, st.invalid), (3, 3));
        assert_eq!(s.mean_entropy(), 0.0);
    }
}
