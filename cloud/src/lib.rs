//! Cloud side of shiftnn's CEMA adaptation.
//!
//! A device uploads its uncertain samples; the cloud replays them through a
//! float emulation of the device's exact `.shift` network (the *student*),
//! trains only the normalization affine parameters (gamma, beta) against a
//! float *teacher*, and sends them back as a signed affine patch
//! (`shiftnn_runtime::adapt::build_patch`).
//!
//! - [`replay`]: FIFO replay buffer of uploaded samples;
//! - [`student`]: float emulation of a `.shift` graph with a hand-written
//!   backward pass for gamma and beta;
//! - [`loss`]: the CEMA loss and its gradient wrt the student's logits;
//! - [`teacher`]: the teacher trait;
//! - [`learner`]: SGD with momentum over gamma/beta, optional statistics
//!   re-estimation, producing `PatchLayer`s.
#![deny(missing_docs)]

pub mod broker;
pub mod learner;
pub mod loss;
pub mod mqtt;
pub mod replay;
pub mod student;
pub mod teacher;
pub mod worker;

pub use learner::{Learner, LearnerConfig, TrainStats};
pub use teacher::{AdaptiveTeacher, Teacher};
