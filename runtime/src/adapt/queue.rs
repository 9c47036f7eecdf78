//! The bounded upload queue (std).
//!
//! Inference pushes selected samples; the transport takes them from the
//! front and acknowledges them once the broker has them. The queue never
//! blocks the caller on the consumer: when full, the oldest sample is
//! dropped and counted ([`QueueStats::dropped`]). Every operation holds the
//! internal lock only for a bounded amount of work (with a spool: one small
//! file write or removal), never while waiting for anything.
//!
//! # Spool
//!
//! With a spool directory, each queued sample is also a file
//! `{seq:020}.sample`, written crash-safely (to `.{seq:020}.tmp`, then
//! renamed; `sync` adds an fsync of the file and the directory for power
//! loss) and removed when acknowledged or dropped, so a restart reloads
//! everything still queued, in order. A file is
//!
//! ```text
//! "SNQ1" | seq u64 LE | payload length u32 LE | payload | FNV-1a 64 of all previous bytes, u64 LE
//! ```
//!
//! A file that fails these checks is renamed to `*.corrupt`, counted
//! ([`QueueStats::corrupt`]) and skipped; nothing in recovery panics.

use crate::format::Fnv64;
use std::collections::VecDeque;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

const MAGIC: &[u8; 4] = b"SNQ1";
/// Largest payload accepted from a spool file (64 MiB).
pub const MAX_SPOOLED_PAYLOAD: usize = 64 << 20;

/// One queued sample.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sample {
    /// Sequence number, increasing (it continues across restarts after the
    /// samples still spooled; an empty spool starts again at 0).
    pub seq: u64,
    /// Opaque payload (the encoded input and its prediction).
    pub payload: Vec<u8>,
}

/// Counters of an [`UploadQueue`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Samples pushed.
    pub pushed: u64,
    /// Samples acknowledged (taken for good).
    pub acked: u64,
    /// Oldest samples dropped because the queue was full.
    pub dropped: u64,
    /// Spool files recovered at start.
    pub recovered: u64,
    /// Spool files found corrupt and skipped.
    pub corrupt: u64,
    /// Spool writes or removals that failed (the sample stays in memory).
    pub spool_errors: u64,
    /// Samples queued now.
    pub len: usize,
}

#[derive(Debug)]
struct Inner {
    items: VecDeque<Sample>,
    next_seq: u64,
    stats: QueueStats,
}

/// A bounded drop-oldest queue with an optional crash-safe spool.
#[derive(Debug)]
pub struct UploadQueue {
    cap: usize,
    spool: Option<PathBuf>,
    sync: bool,
    inner: Mutex<Inner>,
}

fn encode(s: &Sample) -> Vec<u8> {
    let mut b = Vec::with_capacity(24 + s.payload.len());
    b.extend_from_slice(MAGIC);
    b.extend_from_slice(&s.seq.to_le_bytes());
    b.extend_from_slice(&(s.payload.len() as u32).to_le_bytes());
    b.extend_from_slice(&s.payload);
    let mut h = Fnv64::default();
    h.update(&b);
    b.extend_from_slice(&h.0.to_le_bytes());
    b
}

fn decode(b: &[u8]) -> Option<Sample> {
    if b.len() < 24 || &b[..4] != MAGIC {
        return None;
    }
    let seq = u64::from_le_bytes(b[4..12].try_into().ok()?);
    let n = u32::from_le_bytes(b[12..16].try_into().ok()?) as usize;
    if n > MAX_SPOOLED_PAYLOAD || b.len() != 16 + n + 8 {
        return None;
    }
    let mut h = Fnv64::default();
    h.update(&b[..16 + n]);
    if h.0.to_le_bytes() != b[16 + n..] {
        return None;
    }
    Some(Sample {
        seq,
        payload: b[16..16 + n].to_vec(),
    })
}

fn file_name(seq: u64) -> String {
    format!("{seq:020}.sample")
}

impl UploadQueue {
    /// An in-memory queue of at most `cap` samples (at least 1).
    pub fn new(cap: usize) -> UploadQueue {
        UploadQueue {
            cap: cap.max(1),
            spool: None,
            sync: false,
            inner: Mutex::new(Inner {
                items: VecDeque::new(),
                next_seq: 0,
                stats: QueueStats::default(),
            }),
        }
    }

    /// A queue spooled to `dir` (created if missing), reloading what a
    /// previous process left there. Beyond `cap` recovered samples, the
    /// oldest are dropped and counted. `sync` fsyncs every write.
    pub fn with_spool(cap: usize, dir: impl AsRef<Path>, sync: bool) -> std::io::Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        fs::create_dir_all(&dir)?;
        let mut q = UploadQueue::new(cap);
        q.spool = Some(dir.clone());
        q.sync = sync;
        let mut found: Vec<Sample> = Vec::new();
        let inner = q.inner.get_mut().unwrap_or_else(|e| e.into_inner());
        for entry in fs::read_dir(&dir)? {
            let Ok(entry) = entry else {
                inner.stats.corrupt += 1;
                continue;
            };
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".tmp") {
                // An interrupted write: the sample was never queued.
                let _ = fs::remove_file(&path);
                continue;
            }
            let Some(stem) = name.strip_suffix(".sample") else {
                continue;
            };
            let sample = fs::read(&path)
                .ok()
                .and_then(|b| decode(&b))
                .filter(|s| stem.parse::<u64>().ok() == Some(s.seq));
            match sample {
                Some(s) => found.push(s),
                None => {
                    inner.stats.corrupt += 1;
                    let mut bad = path.clone().into_os_string();
                    bad.push(".corrupt");
                    if fs::rename(&path, &bad).is_err() {
                        inner.stats.spool_errors += 1;
                    }
                }
            }
        }
        found.sort_by_key(|s| s.seq);
        inner.stats.recovered = found.len() as u64;
        inner.next_seq = found.last().map_or(0, |s| s.seq + 1);
        let excess = found.len().saturating_sub(q.cap);
        for s in found.drain(..excess) {
            inner.stats.dropped += 1;
            let _ = fs::remove_file(dir.join(file_name(s.seq)));
        }
        inner.items = found.into();
        inner.stats.len = inner.items.len();
        Ok(q)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Capacity.
    pub fn capacity(&self) -> usize {
        self.cap
    }

    fn write_spool(&self, s: &Sample) -> std::io::Result<()> {
        let Some(dir) = &self.spool else {
            return Ok(());
        };
        let tmp = dir.join(format!(".{:020}.tmp", s.seq));
        let mut f = fs::File::create(&tmp)?;
        f.write_all(&encode(s))?;
        if self.sync {
            f.sync_all()?;
        }
        drop(f);
        fs::rename(&tmp, dir.join(file_name(s.seq)))?;
        if self.sync {
            fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }

    fn remove_spool(&self, seq: u64, st: &mut QueueStats) {
        if let Some(dir) = &self.spool {
            match fs::remove_file(dir.join(file_name(seq))) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(_) => st.spool_errors += 1,
            }
        }
    }

    /// Queue a payload; returns its sequence number. Drops (and counts) the
    /// oldest sample when full.
    pub fn push(&self, payload: Vec<u8>) -> u64 {
        let mut g = self.lock();
        let seq = g.next_seq;
        g.next_seq += 1;
        let s = Sample { seq, payload };
        if self.write_spool(&s).is_err() {
            g.stats.spool_errors += 1;
        }
        if g.items.len() >= self.cap {
            if let Some(old) = g.items.pop_front() {
                g.stats.dropped += 1;
                self.remove_spool(old.seq, &mut g.stats);
            }
        }
        g.items.push_back(s);
        g.stats.pushed += 1;
        g.stats.len = g.items.len();
        seq
    }

    /// A copy of the oldest queued sample (it stays queued until acked).
    pub fn front(&self) -> Option<Sample> {
        self.lock().items.front().cloned()
    }

    /// Copies of up to `n` oldest samples.
    pub fn peek(&self, n: usize) -> Vec<Sample> {
        self.lock().items.iter().take(n).cloned().collect()
    }

    /// Acknowledge (remove) the sample `seq`; false if it is no longer
    /// queued (already acked or dropped).
    pub fn ack(&self, seq: u64) -> bool {
        let mut g = self.lock();
        let Some(pos) = g.items.iter().position(|s| s.seq == seq) else {
            return false;
        };
        g.items.remove(pos);
        g.stats.acked += 1;
        self.remove_spool(seq, &mut g.stats);
        g.stats.len = g.items.len();
        true
    }

    /// Take the oldest sample for good (push-and-forget consumers).
    pub fn pop(&self) -> Option<Sample> {
        let mut g = self.lock();
        let s = g.items.pop_front()?;
        g.stats.acked += 1;
        self.remove_spool(s.seq, &mut g.stats);
        g.stats.len = g.items.len();
        Some(s)
    }

    /// Samples queued now.
    pub fn len(&self) -> usize {
        self.lock().items.len()
    }

    /// True when nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Counters.
    pub fn stats(&self) -> QueueStats {
        self.lock().stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codec_round_trip_and_rejects_damage() {
        let s = Sample {
            seq: 7,
            payload: vec![1, 2, 3],
        };
        let b = encode(&s);
        assert_eq!(decode(&b), Some(s));
        for i in 0..b.len() {
            let mut c = b.clone();
            c[i] ^= 0x40;
            assert_eq!(decode(&c), None, "flip at {i}");
        }
        for n in 0..b.len() {
            assert_eq!(decode(&b[..n]), None);
        }
    }
}
