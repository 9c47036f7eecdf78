//! Parameters shared between sessions, swapped atomically (std).
//!
//! [`SharedParams`] holds the current [`Prepared`] behind an `Arc`. A
//! session attached with [`Session::set_shared`](crate::Session::set_shared)
//! checks a generation counter (one atomic load) before each run and, only
//! when it changed, takes a mutex just long enough to clone the `Arc`. No
//! lock is held during inference, and a run uses one `Prepared` from start
//! to end, so no session ever sees half a patch.

use super::patch::{PatchState, VerifyingKey};
use crate::derive::Prepared;
use crate::error::{Error, Result};
use crate::model::Model;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// Replaced parameter sets kept alive by [`SharedParams::store`].
const RETIRED: usize = 4;

/// Patch counters of a [`SharedParams`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PatchStats {
    /// Current patch version (0: the file's parameters).
    pub version: u64,
    /// Patches applied.
    pub accepted: u64,
    /// Patches rejected.
    pub rejected: u64,
    /// The last rejection.
    pub last_error: Option<Error>,
}

/// The current parameters of one model, shared by its sessions.
#[derive(Debug)]
pub struct SharedParams {
    fingerprint: u64,
    slot: Mutex<(Arc<Prepared>, u64)>,
    /// The last few replaced parameters, kept so that a session picking up
    /// new ones does not free the old ones on the inference thread (it is
    /// rarely the last holder); freed by later swaps, on the swapping
    /// thread.
    retired: Mutex<[Option<Arc<Prepared>>; RETIRED]>,
    generation: AtomicU64,
    patches: Mutex<Option<PatchState>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere while holding the lock cannot leave the slot half
    // written (it is replaced whole), so poisoning is ignored.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl SharedParams {
    /// Parameters derived from the model's own tensors.
    pub fn new(model: &Model) -> Result<SharedParams> {
        Ok(Self::with_prepared(model, Prepared::new(model)?))
    }

    /// Start from given parameters.
    pub fn with_prepared(model: &Model, p: Prepared) -> SharedParams {
        SharedParams {
            fingerprint: model.fingerprint(),
            slot: Mutex::new((Arc::new(p), 0)),
            retired: Mutex::new(Default::default()),
            generation: AtomicU64::new(0),
            patches: Mutex::new(None),
        }
    }

    /// Fingerprint of the model these parameters belong to.
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    /// Incremented by every swap.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The current parameters and their generation.
    pub fn load(&self) -> (Arc<Prepared>, u64) {
        let g = lock(&self.slot);
        (g.0.clone(), g.1)
    }

    /// Swap in new parameters (whole). Runs already started finish with the
    /// old ones.
    pub fn store(&self, p: Prepared) {
        let p = Arc::new(p);
        let (old, gen) = {
            let mut g = lock(&self.slot);
            let gen = g.1 + 1;
            let old = core::mem::replace(&mut *g, (p, gen));
            self.generation.store(gen, Ordering::Release);
            (old.0, gen)
        };
        // Sessions still running on `old` drop their reference when they
        // next refresh; keeping one here makes the oldest retired set the
        // one freed, here, outside the slot lock.
        let evicted = {
            let mut r = lock(&self.retired);
            r[gen as usize % RETIRED].replace(old)
        };
        drop(evicted);
    }

    /// Trust `key` for patches, starting at patch version `version`.
    pub fn trust(&self, key: VerifyingKey, version: u64) {
        *lock(&self.patches) = Some(PatchState::new(key, version));
    }

    /// Verify a signed affine patch and swap it in atomically; returns the
    /// new version. A rejection is counted, kept as `last_error`, and the
    /// current parameters stay. Concurrent calls are serialized.
    pub fn apply_patch(&self, model: &Model, blob: &[u8]) -> Result<u64> {
        if model.fingerprint() != self.fingerprint {
            return Err(Error::Patch(
                "the model passed is not the one these parameters belong to".into(),
            ));
        }
        let mut st = lock(&self.patches);
        let st = st
            .as_mut()
            .ok_or_else(|| Error::Patch("no trusted key (call SharedParams::trust)".into()))?;
        let (base, _) = self.load();
        let next = st.try_apply(model, &base, blob)?;
        self.store(next);
        Ok(st.version)
    }

    /// Patch counters.
    pub fn patch_stats(&self) -> PatchStats {
        match &*lock(&self.patches) {
            Some(s) => PatchStats {
                version: s.version,
                accepted: s.accepted,
                rejected: s.rejected,
                last_error: s.last_error.clone(),
            },
            None => PatchStats::default(),
        }
    }
}
