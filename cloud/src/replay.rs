//! FIFO replay buffer of uploaded samples.

use std::collections::VecDeque;

/// One uploaded sample as the learner keeps it.
#[derive(Clone, Debug)]
pub struct Replayed {
    /// The input, flattened, in float.
    pub input: Vec<f32>,
    /// Entropy of the device's prediction, in units of ln C.
    pub entropy: f32,
    /// Teacher logits, computed when the sample arrives and again, when
    /// the sample is replayed, after the teacher has adapted.
    pub teacher: Vec<f32>,
    /// Generation of the teacher that gave `teacher` (the learner counts
    /// the teacher's adaptations).
    pub label_gen: u64,
}

/// Bounded FIFO of samples: when full, the oldest sample leaves, so the
/// buffer follows the device's current distribution.
#[derive(Clone, Debug)]
pub struct ReplayBuffer {
    items: VecDeque<Replayed>,
    capacity: usize,
    /// Samples ever pushed (including those evicted since).
    pushed: u64,
}

impl ReplayBuffer {
    /// An empty buffer holding at most `capacity` samples (at least 1).
    pub fn new(capacity: usize) -> ReplayBuffer {
        let capacity = capacity.max(1);
        ReplayBuffer {
            items: VecDeque::with_capacity(capacity.min(1 << 16)),
            capacity,
            pushed: 0,
        }
    }

    /// Append a sample, evicting the oldest if full.
    pub fn push(&mut self, s: Replayed) {
        if self.items.len() == self.capacity {
            self.items.pop_front();
        }
        self.items.push_back(s);
        self.pushed += 1;
    }

    /// Samples held.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// True when no sample is held.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Maximum number of samples held.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Samples ever pushed.
    pub fn pushed(&self) -> u64 {
        self.pushed
    }

    /// The `i`-th oldest sample held.
    pub fn get(&self, i: usize) -> Option<&Replayed> {
        self.items.get(i)
    }

    /// The `i`-th oldest sample held, mutable (to relabel it).
    pub fn get_mut(&mut self, i: usize) -> Option<&mut Replayed> {
        self.items.get_mut(i)
    }

    /// Samples from oldest to newest.
    pub fn iter(&self) -> impl Iterator<Item = &Replayed> {
        self.items.iter()
    }
}
