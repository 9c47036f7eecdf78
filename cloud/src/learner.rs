//! The learner: SGD with momentum over the student's gamma/beta, from a
//! replay buffer of uploaded samples, with optional re-estimation of the
//! running statistics.
//!
//! Each uploaded sample is labelled by the teacher when it arrives.
//! A [`Learner::train`] call first (when `update_stats` is set) re-estimates
//! every layer's mean and variance from the most recent replayed samples,
//! blended with the file's statistics by `stats_alpha` (the alpha-BN rule
//! the device uses locally), and (when SGD is on) lets the teacher adapt
//! to the same samples ([`Teacher::adapt`]); then it runs SGD steps on the
//! CEMA loss over minibatches drawn uniformly from the buffer, with the
//! statistics fixed (the device runs with them too). A drawn sample that an
//! older teacher labelled is labelled again first.

use crate::loss;
use crate::replay::{ReplayBuffer, Replayed};
use crate::student::{NormLayer, Student};
use crate::teacher::Teacher;
use anyhow::{ensure, Result};
use shiftnn_runtime::adapt::PatchLayer;
use shiftnn_runtime::Model;

/// Learner settings.
#[derive(Clone, Debug)]
pub struct LearnerConfig {
    /// SGD learning rate; 0 turns SGD off (`train` then only re-estimates
    /// statistics). Offline (converter/examples/cema_offline.rs, Fashion-
    /// MNIST corruption streams) SGD at 1e-3 with a teacher that adapts its
    /// own statistics ([`crate::teacher::AdaptiveTeacher`]) recovers more
    /// of the lost accuracy than statistics alone on all four corruptions
    /// (held-out half: 65/65/60/73 % vs 57/63/55/68 %; with the fixed FP32
    /// teacher SGD lowers accuracy instead). The default stays 0 because
    /// in the live `shiftnn adapt-demo` (1000 images per device, 2 workers
    /// on a shared 2-core machine) the slower training rounds delay the
    /// patches: accuracy over the stream 53.4 % with `--lr 1e-3` against
    /// 64.9 % with `--lr 0`, the same final accuracy (69.0 vs 68.8 %).
    pub lr: f32,
    /// SGD momentum.
    pub momentum: f32,
    /// Minibatch size.
    pub batch: usize,
    /// Replay buffer capacity (samples).
    pub replay_capacity: usize,
    /// `E_max` of the sample weight `1/exp(E - E_max)`, in units of ln C
    /// (CEMA: 0.4).
    pub e_max: f32,
    /// Re-estimate running mean/var from replayed samples.
    pub update_stats: bool,
    /// Send re-estimated statistics folded into gamma and beta (relative
    /// to the file's statistics, which the device keeps) instead of as
    /// mean and variance: the patch then holds only the affine bytes,
    /// half the size. See [`NormLayer::folded`].
    pub fold_stats: bool,
    /// Blend of re-estimated statistics: `(1 - a) * file + a * replay`.
    pub stats_alpha: f32,
    /// Most recent samples used to re-estimate statistics.
    pub stats_samples: usize,
    /// Samples the buffer must hold before statistics are re-estimated
    /// (a handful of samples gives a variance estimate that breaks the
    /// model rather than adapting it).
    pub stats_min_samples: usize,
    /// Round int8 activations in the student (int8 models only; see
    /// [`crate::student`]).
    pub fake_quant: bool,
    /// Seed of the minibatch sampler.
    pub seed: u64,
}

impl Default for LearnerConfig {
    fn default() -> Self {
        LearnerConfig {
            lr: 0.0,
            momentum: 0.9,
            batch: 32,
            replay_capacity: 1024,
            e_max: 0.4,
            update_stats: true,
            fold_stats: true,
            stats_alpha: 1.0,
            stats_samples: 512,
            stats_min_samples: 32,
            fake_quant: true,
            seed: 0x5eed_c0de,
        }
    }
}

/// Figures of one [`Learner::train`] call.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TrainStats {
    /// SGD steps taken.
    pub steps: usize,
    /// Mean weighted loss over the steps (before each step's update).
    pub loss: f32,
    /// Samples the statistics were re-estimated from (0: not re-estimated).
    pub stats_samples: usize,
    /// Replayed samples the teacher labelled again (after it adapted) before
    /// they were used.
    pub relabelled: usize,
}

/// Trains one device's normalization parameters.
pub struct Learner {
    teacher: Box<dyn Teacher>,
    replay: ReplayBuffer,
    student: Student,
    /// The file's parameters (statistics blend source).
    source: Vec<NormLayer>,
    vel_gamma: Vec<Vec<f32>>,
    vel_beta: Vec<Vec<f32>>,
    /// True once statistics differ from the file's (then they are sent).
    stats_changed: bool,
    /// Adaptations of the teacher so far (see `Replayed::label_gen`).
    teacher_gen: u64,
    rejected: u64,
    rng: u64,
    cfg: LearnerConfig,
}

impl Learner {
    /// A learner for `student`, the exact `.shift` the device runs.
    pub fn new(student: &Model, teacher: Box<dyn Teacher>, cfg: LearnerConfig) -> Result<Learner> {
        ensure!(cfg.batch > 0, "batch must be positive");
        ensure!(
            (0.0..=1.0).contains(&cfg.stats_alpha),
            "stats_alpha must be in [0, 1]"
        );
        let mut s = Student::new(student)?;
        s.set_fake_quant(cfg.fake_quant && student.mode() == shiftnn_runtime::Mode::Int8);
        let source = s.norms().to_vec();
        Ok(Learner {
            teacher,
            replay: ReplayBuffer::new(cfg.replay_capacity),
            vel_gamma: source.iter().map(|n| vec![0.0; n.gamma.len()]).collect(),
            vel_beta: source.iter().map(|n| vec![0.0; n.beta.len()]).collect(),
            student: s,
            source,
            stats_changed: false,
            teacher_gen: 0,
            rejected: 0,
            rng: cfg.seed | 1,
            cfg,
        })
    }

    /// Add one uploaded sample (`entropy` as the device computed it, in
    /// units of ln C). A sample of the wrong length, with non-finite values,
    /// or that the teacher fails on is dropped and counted
    /// ([`Learner::rejected`]).
    pub fn push(&mut self, input: Vec<f32>, entropy: f32) {
        if input.len() != self.student.input_len()
            || !entropy.is_finite()
            || input.iter().any(|v| !v.is_finite())
        {
            self.rejected += 1;
            return;
        }
        match self.teacher.logits(&input) {
            Ok(t) if t.len() == self.student.classes() && t.iter().all(|v| v.is_finite()) => {
                self.replay.push(Replayed {
                    input,
                    entropy,
                    teacher: t,
                    label_gen: self.teacher_gen,
                })
            }
            _ => self.rejected += 1,
        }
    }

    /// Samples dropped by [`Learner::push`].
    pub fn rejected(&self) -> u64 {
        self.rejected
    }

    /// Adopt parameters published by another worker (every prefix must be
    /// one of the model's layers; mean/var when present). Momentum of the
    /// adopted layers restarts from zero.
    pub fn set_layers(&mut self, layers: &[PatchLayer]) -> Result<()> {
        let mut next = self.student.clone();
        for l in layers {
            next.set_layer(
                &l.prefix,
                &l.gamma,
                &l.beta,
                l.mean.as_deref(),
                l.var.as_deref(),
            )?;
        }
        self.student = next;
        for l in layers {
            if let Some(i) = self.source.iter().position(|n| n.prefix == l.prefix) {
                self.vel_gamma[i].iter_mut().for_each(|v| *v = 0.0);
                self.vel_beta[i].iter_mut().for_each(|v| *v = 0.0);
            }
            if l.mean.is_some() || l.var.is_some() {
                self.stats_changed = true;
            }
        }
        Ok(())
    }

    /// Label again, with the current teacher, the samples among `idx`
    /// that an older teacher labelled; a sample the teacher now fails on
    /// keeps its old label (and is retried next time). Returns the samples
    /// relabelled.
    fn relabel(&mut self, idx: &[usize]) -> usize {
        let gen = self.teacher_gen;
        let mut stale: Vec<usize> = idx
            .iter()
            .copied()
            .filter(|&i| self.replay.get(i).is_some_and(|s| s.label_gen != gen))
            .collect();
        stale.sort_unstable();
        stale.dedup();
        if stale.is_empty() {
            return 0;
        }
        let xs: Vec<&[f32]> = stale
            .iter()
            .filter_map(|&i| self.replay.get(i).map(|s| &s.input[..]))
            .collect();
        let Ok(ts) = self.teacher.logits_batch(&xs) else {
            return 0;
        };
        let classes = self.student.classes();
        let mut done = 0;
        for (&i, t) in stale.iter().zip(ts) {
            if t.len() == classes && t.iter().all(|v| v.is_finite()) {
                if let Some(s) = self.replay.get_mut(i) {
                    s.teacher = t;
                    s.label_gen = gen;
                    done += 1;
                }
            }
        }
        done
    }

    /// The teacher (for example to evaluate it).
    pub fn teacher_mut(&mut self) -> &mut dyn Teacher {
        &mut *self.teacher
    }

    fn next_index(&mut self, n: usize) -> usize {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng % n as u64) as usize
    }

    /// Re-estimate statistics (when `update_stats`), then SGD steps over
    /// minibatches from the replay buffer (none when it is empty or `lr`
    /// is 0).
    pub fn train(&mut self, steps: usize) -> TrainStats {
        let mut st = TrainStats::default();
        let n = self.replay.len();
        if n == 0 {
            return st;
        }
        let sgd = self.cfg.lr > 0.0 && steps > 0;
        if (self.cfg.update_stats || sgd) && n >= self.cfg.stats_min_samples {
            let k = n.min(self.cfg.stats_samples.max(1));
            let xs: Vec<&[f32]> = self
                .replay
                .iter()
                .skip(n - k)
                .map(|s| &s.input[..])
                .collect();
            // Inputs were checked on push, so this cannot fail.
            if self.cfg.update_stats
                && self
                    .student
                    .estimate_stats(&xs, &self.source, self.cfg.stats_alpha)
                    .is_ok()
            {
                st.stats_samples = k;
                self.stats_changed = true;
            }
            // The teacher adapts to the same uploads (a teacher run
            // unchanged on shifted inputs is about as wrong as the
            // student), whether or not the student's statistics are
            // re-estimated. Its labels are only used by SGD, so without SGD
            // it is left alone. Replayed samples are relabelled lazily, when
            // drawn: at most `steps * batch` teacher passes per call.
            if sgd && matches!(self.teacher.adapt(&xs), Ok(true)) {
                self.teacher_gen += 1;
            }
        }
        let mut loss_sum = 0f64;
        let steps = if self.cfg.lr > 0.0 { steps } else { 0 };
        for _ in 0..steps {
            let idx: Vec<usize> = (0..self.cfg.batch.min(n))
                .map(|_| self.next_index(n))
                .collect();
            st.relabelled += self.relabel(&idx);
            let batch: Vec<&Replayed> = idx.iter().filter_map(|&i| self.replay.get(i)).collect();
            let xs: Vec<&[f32]> = batch.iter().map(|s| &s.input[..]).collect();
            let Ok(fwd) = self.student.forward(&xs) else {
                break;
            };
            let logits: Vec<&[f32]> = (0..fwd.len()).map(|i| fwd.logits(i)).collect();
            let ts: Vec<&[f32]> = batch.iter().map(|s| &s.teacher[..]).collect();
            let es: Vec<f32> = batch.iter().map(|s| s.entropy).collect();
            let (l, dl) = loss::cema(&logits, &ts, &es, self.cfg.e_max);
            let Ok(g) = self.student.backward(&fwd, &dl) else {
                break;
            };
            let (lr, mu) = (self.cfg.lr, self.cfg.momentum);
            for (li, layer) in self.student.norms_mut().iter_mut().enumerate() {
                for (c, p) in layer.gamma.iter_mut().enumerate() {
                    let v = &mut self.vel_gamma[li][c];
                    *v = mu * *v + g.gamma[li][c];
                    *p -= lr * *v;
                }
                for (c, p) in layer.beta.iter_mut().enumerate() {
                    let v = &mut self.vel_beta[li][c];
                    *v = mu * *v + g.beta[li][c];
                    *p -= lr * *v;
                }
            }
            loss_sum += l as f64;
            st.steps += 1;
        }
        if st.steps > 0 {
            st.loss = (loss_sum / st.steps as f64) as f32;
        }
        st
    }

    /// Current parameters, ready for `runtime::adapt::build_patch`: gamma
    /// and beta of every layer, plus mean and variance once they differ
    /// from the file's.
    /// With `fold_stats`, statistics are folded into gamma and beta and
    /// mean/var are never sent.
    ///
    /// Folding loses which part is gamma and which the statistics, so
    /// workers that share a device must exchange [`Learner::state`] instead
    /// (adopting a folded patch and re-estimating statistics on top would
    /// apply the shift correction twice).
    pub fn layers(&self) -> Vec<PatchLayer> {
        if self.cfg.fold_stats {
            return self
                .student
                .norms()
                .iter()
                .zip(&self.source)
                .map(|(n, s)| {
                    let (gamma, beta) = n.folded(s);
                    PatchLayer {
                        prefix: n.prefix.clone(),
                        gamma,
                        beta,
                        mean: None,
                        var: None,
                    }
                })
                .collect();
        }
        self.student
            .norms()
            .iter()
            .map(|n| PatchLayer {
                prefix: n.prefix.clone(),
                gamma: n.gamma.clone(),
                beta: n.beta.clone(),
                mean: self.stats_changed.then(|| n.mean.clone()),
                var: self.stats_changed.then(|| n.var.clone()),
            })
            .collect()
    }

    /// The learner's full parameters, statistics included, unfolded: what
    /// another learner of the same device adopts with
    /// [`Learner::set_layers`].
    pub fn state(&self) -> Vec<PatchLayer> {
        self.student
            .norms()
            .iter()
            .map(|n| PatchLayer {
                prefix: n.prefix.clone(),
                gamma: n.gamma.clone(),
                beta: n.beta.clone(),
                mean: Some(n.mean.clone()),
                var: Some(n.var.clone()),
            })
            .collect()
    }

    /// The replay buffer (samples with their current teacher labels).
    pub fn replay(&self) -> &ReplayBuffer {
        &self.replay
    }

    /// Samples in the replay buffer.
    pub fn replay_len(&self) -> usize {
        self.replay.len()
    }

    /// The student (for evaluation).
    pub fn student(&self) -> &Student {
        &self.student
    }

    /// The settings.
    pub fn config(&self) -> &LearnerConfig {
        &self.cfg
    }
}
