//! The edge side of cloud-edge adaptation (after CEMA).
//!
//! - [`select`] (no_std): entropy-based sample selection;
//! - [`patch`] (no_std): signed affine patches, verification and apply;
//! - [`alpha_bn`] (no_std): forward-only BatchNorm recalibration;
//! - `queue` (std): the bounded, spooled upload queue;
//! - `shared` (std): parameters shared by sessions and swapped atomically;
//! - [`wire`] (no_std): the uploaded-sample message;
//! - `mqtt` (feature `mqtt`): the MQTT link to the broker.

pub mod alpha_bn;
#[cfg(feature = "mqtt")]
pub mod mqtt;
pub mod patch;
#[cfg(feature = "std")]
pub mod queue;
pub mod select;
#[cfg(feature = "std")]
pub mod shared;
pub mod wire;

pub use alpha_bn::{AlphaBn, AlphaBnConfig};
pub use patch::{
    apply_patch, build_patch, verify_patch, AffinePatch, PatchLayer, PatchState, SigningKey,
    VerifyingKey,
};
#[cfg(feature = "std")]
pub use queue::{QueueStats, Sample, UploadQueue};
pub use select::{Decision, SelectConfig, SelectStats, Selector, Verdict};
#[cfg(feature = "std")]
pub use shared::{PatchStats, SharedParams};
pub use wire::{decode_sample, encode_sample, SampleInput, SampleMsg};
