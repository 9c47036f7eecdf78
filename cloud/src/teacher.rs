//! The teacher: a float model whose predictions the student learns from.
//!
//! A teacher that is run unchanged on shifted inputs is about as wrong as
//! the student it teaches (on the Fashion-MNIST corruption streams the FP32
//! model scores 13-68 %, see `converter/examples/cema_offline.rs`), and
//! distilling from it pulls the student down. [`AdaptiveTeacher`] gives the
//! teacher the same test-time adaptation the student gets: its BatchNorm
//! statistics are re-estimated from the uploaded samples.

use crate::student::{NormLayer, Student};
use anyhow::{ensure, Result};
use shiftnn_runtime::Model;

/// A source of target logits for an uploaded input (typically the float
/// ONNX model the `.shift` was converted from, or a larger model).
pub trait Teacher: Send {
    /// Logits for one input (the flattened tensor the device's model
    /// takes, in float).
    fn logits(&mut self, input: &[f32]) -> anyhow::Result<Vec<f32>>;

    /// Logits for a batch of inputs (one `logits` call each unless the
    /// teacher batches).
    fn logits_batch(&mut self, inputs: &[&[f32]]) -> anyhow::Result<Vec<Vec<f32>>> {
        inputs.iter().map(|x| self.logits(x)).collect()
    }

    /// Adapt the teacher to recent uploads (most recent last). Returns true
    /// when the teacher changed, so that labels it gave before are stale
    /// and the learner relabels its replay buffer. The default teacher is
    /// fixed.
    fn adapt(&mut self, _inputs: &[&[f32]]) -> anyhow::Result<bool> {
        Ok(false)
    }
}

/// A teacher given by a float `.shift` model (for example the FP32 network
/// converted with `--mode float` and every weighted layer kept in f32),
/// evaluated by the [`Student`] emulation, whose normalization statistics
/// [`Teacher::adapt`] re-estimates from the uploads, blended with the
/// file's as `(1 - alpha) * file + alpha * uploads`.
#[derive(Clone, Debug)]
pub struct AdaptiveTeacher {
    net: Student,
    source: Vec<NormLayer>,
    alpha: f32,
    min_samples: usize,
}

impl AdaptiveTeacher {
    /// A teacher over `model`; statistics are re-estimated only from at
    /// least `min_samples` inputs (fewer give variances that break the
    /// network rather than adapt it).
    pub fn new(model: &Model, alpha: f32, min_samples: usize) -> Result<AdaptiveTeacher> {
        ensure!((0.0..=1.0).contains(&alpha), "alpha must be in [0, 1]");
        let mut net = Student::new(model)?;
        // The teacher is the float network: no int8 rounding even if the
        // file is int8.
        net.set_fake_quant(false);
        let source = net.norms().to_vec();
        Ok(AdaptiveTeacher {
            net,
            source,
            alpha,
            min_samples: min_samples.max(1),
        })
    }

    /// The teacher's network (current statistics).
    pub fn net(&self) -> &Student {
        &self.net
    }
}

impl Teacher for AdaptiveTeacher {
    fn logits(&mut self, input: &[f32]) -> Result<Vec<f32>> {
        Ok(self.net.forward(&[input])?.logits(0).to_vec())
    }

    fn logits_batch(&mut self, inputs: &[&[f32]]) -> Result<Vec<Vec<f32>>> {
        let f = self.net.forward(inputs)?;
        Ok((0..f.len()).map(|i| f.logits(i).to_vec()).collect())
    }

    fn adapt(&mut self, inputs: &[&[f32]]) -> Result<bool> {
        if inputs.len() < self.min_samples || self.source.is_empty() {
            return Ok(false);
        }
        self.net.estimate_stats(inputs, &self.source, self.alpha)?;
        Ok(true)
    }
}

/// A [`TeacherFactory`](crate::worker::TeacherFactory) giving each device
/// learner its own [`AdaptiveTeacher`] over `model` (a float `.shift` of
/// the teacher network, every weighted layer kept in f32), so that each
/// adapts to its own device's uploads.
pub fn adaptive_factory(
    model: &Model,
    alpha: f32,
    min_samples: usize,
) -> Result<crate::worker::TeacherFactory> {
    let proto = AdaptiveTeacher::new(model, alpha, min_samples)?;
    Ok(std::sync::Arc::new(move || {
        Ok(Box::new(proto.clone()) as Box<dyn Teacher>)
    }))
}
