//! The learner: SGD with momentum over the student's gamma/beta.
//!
//! SKELETON: the API is final; `train` does not train yet.

use crate::replay::{ReplayBuffer, Replayed};
use crate::teacher::Teacher;
use anyhow::{bail, Result};
use shiftnn_runtime::adapt::PatchLayer;
use shiftnn_runtime::Model;

/// Learner settings.
#[derive(Clone, Debug)]
pub struct LearnerConfig {
    /// SGD learning rate.
    pub lr: f32,
    /// SGD momentum.
    pub momentum: f32,
    /// Minibatch size.
    pub batch: usize,
    /// Replay buffer capacity (samples).
    pub replay_capacity: usize,
    /// Entropy of the sample weighting `1/exp(E - e_max)`, in units of ln C.
    pub e_max: f32,
    /// Re-estimate running mean/var from replayed samples.
    pub update_stats: bool,
}

impl Default for LearnerConfig {
    fn default() -> Self {
        LearnerConfig {
            lr: 1e-3,
            momentum: 0.9,
            batch: 16,
            replay_capacity: 1024,
            e_max: 0.4,
            update_stats: false,
        }
    }
}

/// Figures of one `train` call.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TrainStats {
    /// SGD steps taken.
    pub steps: usize,
    /// Mean loss over the steps.
    pub loss: f32,
}

/// Trains one device's normalization parameters.
pub struct Learner {
    teacher: Box<dyn Teacher>,
    replay: ReplayBuffer,
    layers: Vec<PatchLayer>,
    #[allow(dead_code)]
    cfg: LearnerConfig,
}

impl Learner {
    /// A learner for `student`, the exact `.shift` the device runs.
    pub fn new(student: &Model, teacher: Box<dyn Teacher>, cfg: LearnerConfig) -> Result<Learner> {
        let mut layers = Vec::new();
        for node in &student.graph().nodes {
            if let Some(n) = node.op.norm() {
                let c = student.graph().values[node.output]
                    .shape
                    .get(1)
                    .copied()
                    .unwrap_or(0);
                let p = student.norm_params(&n.prefix, c)?;
                layers.push(PatchLayer {
                    prefix: n.prefix.clone(),
                    gamma: p.gamma,
                    beta: p.beta,
                    mean: None,
                    var: None,
                });
            }
        }
        Ok(Learner {
            teacher,
            replay: ReplayBuffer::new(cfg.replay_capacity),
            layers,
            cfg,
        })
    }

    /// Add one uploaded sample (`entropy` as the device computed it, in
    /// units of ln C).
    pub fn push(&mut self, input: Vec<f32>, entropy: f32) {
        if let Ok(t) = self.teacher.logits(&input) {
            self.replay.push(Replayed {
                input,
                entropy,
                teacher: t,
            });
        }
    }

    /// Adopt parameters published by another worker.
    pub fn set_layers(&mut self, layers: &[PatchLayer]) -> Result<()> {
        for l in layers {
            let Some(mine) = self.layers.iter_mut().find(|m| m.prefix == l.prefix) else {
                bail!("unknown layer \"{}\"", l.prefix);
            };
            *mine = l.clone();
        }
        Ok(())
    }

    /// SGD steps over minibatches from the replay buffer.
    pub fn train(&mut self, _steps: usize) -> TrainStats {
        TrainStats::default()
    }

    /// Current parameters, ready for `build_patch`.
    pub fn layers(&self) -> Vec<PatchLayer> {
        self.layers.clone()
    }

    /// Samples in the replay buffer.
    pub fn replay_len(&self) -> usize {
        self.replay.len()
    }
}
