//! A cloud worker: consumes uploaded samples over MQTT, trains one
//! [`Learner`] per device and publishes signed, retained affine patches.
//!
//! Several workers share the load through one shared subscription, so one
//! device's samples are spread over them. To keep one parameter history per
//! device, each worker publishes with every patch the learner's full state
//! ([`Learner::state`]: gamma, beta, mean and variance, unfolded), signed
//! and retained on the device's state topic (`shiftnn/f/d/state`, which
//! the broker's ACL keeps from devices), and reads every device's state:
//!
//! - a state with a version at least the highest it has seen for that
//!   device (checked with [`verify_patch`] against the fleet key) replaces
//!   its learner's parameters ([`Learner::set_layers`]); its own states
//!   come back the same way, so when two workers publish the same version
//!   at once, both end on the one the broker delivered last, which is the
//!   one it retains;
//! - its next patch for that device gets version = highest seen + 1.
//!
//! Workers do not sync on the device patches themselves: those carry the
//! statistics folded into gamma and beta (half the bytes), which cannot be
//! taken apart again.
//!
//! The retained state is the source of truth: a restarted worker receives
//! every device's state on subscribing and continues from it. Samples are
//! acknowledged to the broker (manual QoS 1 acks) only after they are in
//! the replay buffer, and the worker's session is persistent, so a sample
//! delivered to a worker that dies before acknowledging it is delivered
//! again when that worker reconnects.
//!
//! A message that does not decode, or that belongs to another model, is
//! counted and skipped (and acknowledged, so the broker does not resend it).

use crate::learner::{Learner, LearnerConfig};
use crate::mqtt::{
    affine_topic, all_state_filter, parse_topic, shared_samples_filter, state_topic, TopicKind,
};
use crate::teacher::Teacher;
use anyhow::Result;
use rumqttc::{Client, Event, MqttOptions, Packet, Publish, QoS, RecvTimeoutError};
use shiftnn_runtime::adapt::{build_patch, decode_sample, verify_patch, SigningKey};
use shiftnn_runtime::format::Fnv64;
use shiftnn_runtime::{Model, Prepared};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Makes one teacher per device learner.
pub type TeacherFactory = Arc<dyn Fn() -> Result<Box<dyn Teacher>> + Send + Sync>;

/// Settings of a [`Worker`].
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// Broker host.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// Username (the broker's cloud user).
    pub username: String,
    /// Password.
    pub password: String,
    /// MQTT client id; keep it across restarts so the broker's persistent
    /// session (samples queued while the worker was down) is found again.
    pub client_id: String,
    /// Fleet name.
    pub fleet: String,
    /// Shared-subscription group of the workers.
    pub group: String,
    /// Train after this many new samples of a device (default 32).
    pub train_every: usize,
    /// SGD steps per training round (default 20).
    pub steps: usize,
    /// Samples a device's replay buffer needs before the first round.
    pub min_replay: usize,
    /// Learner settings for every device.
    pub learner: LearnerConfig,
    /// Append one line `device boot seq` per new sample to this file
    /// (flushed before the sample is acknowledged), for delivery audits.
    pub received_log: Option<PathBuf>,
    /// Log to stderr.
    pub log: bool,
    /// Keep-alive interval (default 30 s: a training round blocks the
    /// connection's event loop, and must not look like a dead client).
    pub keep_alive: Duration,
}

impl WorkerConfig {
    /// Defaults for a worker of `group` on `fleet`.
    pub fn new(
        host: impl Into<String>,
        port: u16,
        username: impl Into<String>,
        password: impl Into<String>,
        client_id: impl Into<String>,
        fleet: impl Into<String>,
        group: impl Into<String>,
    ) -> WorkerConfig {
        WorkerConfig {
            host: host.into(),
            port,
            username: username.into(),
            password: password.into(),
            client_id: client_id.into(),
            fleet: fleet.into(),
            group: group.into(),
            train_every: 32,
            steps: 20,
            min_replay: 16,
            learner: LearnerConfig::default(),
            received_log: None,
            log: true,
            keep_alive: Duration::from_secs(30),
        }
    }
}

/// Counters of one device at a worker.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DeviceStats {
    /// New samples received for it.
    pub received: u64,
    /// Training rounds.
    pub trainings: u64,
    /// Patches this worker published for it.
    pub published: u64,
    /// Learner states of other workers adopted.
    pub adopted: u64,
    /// Highest patch version seen.
    pub version: u64,
    /// Mean loss of the last training round.
    pub last_loss: f32,
}

/// Counters of a [`Worker`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WorkerStats {
    /// Connected to the broker now.
    pub connected: bool,
    /// Successful connections.
    pub connects: u64,
    /// Failed connections or connection attempts.
    pub failures: u64,
    /// New samples received (all devices).
    pub received: u64,
    /// Samples received again (same device, boot and sequence number).
    pub duplicates: u64,
    /// Messages that did not decode.
    pub malformed: u64,
    /// Samples scored by another model.
    pub wrong_model: u64,
    /// Messages on topics outside the fleet's scheme.
    pub wrong_topic: u64,
    /// Retained learner states that failed verification.
    pub bad_patches: u64,
    /// Learners that could not be created or trained.
    pub learner_errors: u64,
    /// Bytes published: patches and learner states.
    pub bytes_published: u64,
    /// Size of the last patch published.
    pub last_patch_bytes: usize,
    /// Per device.
    pub devices: BTreeMap<String, DeviceStats>,
    /// The last error.
    pub last_error: Option<String>,
}

/// Recently received `(boot, seq)` pairs of one device, for dropping QoS 1
/// redeliveries. Bounded: at most [`Dedup::BOOTS`] boots and
/// [`Dedup::PER_BOOT`] sequence numbers per boot, the oldest forgotten
/// first. Redeliveries come within the broker's in-flight window, far
/// inside these bounds; a forgotten pair seen again is accepted (a
/// duplicate sample in the replay buffer costs little, a dropped one is
/// lost).
#[derive(Default)]
struct Dedup {
    boots: std::collections::VecDeque<(u64, std::collections::BTreeSet<u64>)>,
}

impl Dedup {
    const BOOTS: usize = 8;
    const PER_BOOT: usize = 4096;

    /// True if `(boot, seq)` was not seen (and records it).
    fn insert(&mut self, boot: u64, seq: u64) -> bool {
        let i = match self.boots.iter().position(|(b, _)| *b == boot) {
            Some(i) => i,
            None => {
                if self.boots.len() == Self::BOOTS {
                    self.boots.pop_front();
                }
                self.boots.push_back((boot, Default::default()));
                self.boots.len() - 1
            }
        };
        let set = &mut self.boots[i].1;
        if !set.insert(seq) {
            return false;
        }
        if set.len() > Self::PER_BOOT {
            set.pop_first();
        }
        true
    }
}

struct Device {
    learner: Option<Learner>,
    seen: Dedup,
    new_since_train: usize,
    /// Hash of the last patch this worker published for the device.
    own: Option<u64>,
}

struct State {
    cfg: WorkerConfig,
    student: Arc<Model<'static>>,
    base: Prepared,
    teacher: TeacherFactory,
    key: SigningKey,
    devices: BTreeMap<String, Device>,
    stats: Arc<Mutex<WorkerStats>>,
    stop: Arc<AtomicBool>,
    log_file: Option<File>,
}

/// A running worker thread. Dropping it stops the thread.
pub struct Worker {
    stop: Arc<AtomicBool>,
    stats: Arc<Mutex<WorkerStats>>,
    thread: Option<JoinHandle<()>>,
}

fn lock(m: &Mutex<WorkerStats>) -> MutexGuard<'_, WorkerStats> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn hash(b: &[u8]) -> u64 {
    let mut h = Fnv64::default();
    h.update(b);
    h.0
}

impl Worker {
    /// Start a worker for `student` (the exact `.shift` the devices run),
    /// signing its patches with `key`.
    pub fn start(
        cfg: WorkerConfig,
        student: Arc<Model<'static>>,
        teacher: TeacherFactory,
        key: SigningKey,
    ) -> Result<Worker> {
        let base = Prepared::new(&student).map_err(|e| anyhow::anyhow!("student model: {e}"))?;
        let log_file = match &cfg.received_log {
            Some(p) => Some(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?,
            ),
            None => None,
        };
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(Mutex::new(WorkerStats::default()));
        let mut st = State {
            cfg,
            student,
            base,
            teacher,
            key,
            devices: BTreeMap::new(),
            stats: stats.clone(),
            stop: stop.clone(),
            log_file,
        };
        let thread = std::thread::Builder::new()
            .name("shiftnn-worker".into())
            .spawn(move || st.run())?;
        Ok(Worker {
            stop,
            stats,
            thread: Some(thread),
        })
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> WorkerStats {
        lock(&self.stats).clone()
    }

    /// True while the worker thread runs.
    pub fn is_running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Stop (disconnecting from the broker) and wait for the thread.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl State {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    fn log(&self, m: &str) {
        if self.cfg.log {
            eprintln!("shiftnn cloud [{}]: {m}", self.cfg.client_id);
        }
    }

    fn run(&mut self) {
        // Capped at 1 s: after a broker restart the workers must be back
        // before the devices resume publishing (LinkConfig::resume_delay).
        let (min, max) = (Duration::from_millis(100), Duration::from_secs(1));
        let mut backoff = min;
        while !self.stopped() {
            if self.connection() {
                backoff = min;
            }
            let until = Instant::now() + backoff;
            while Instant::now() < until {
                if self.stopped() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            backoff = (backoff * 2).min(max);
        }
        lock(&self.stats).connected = false;
    }

    /// One client from connect to failure or stop; true if it connected.
    fn connection(&mut self) -> bool {
        let c = &self.cfg;
        let mut opts = MqttOptions::new(c.client_id.clone(), c.host.clone(), c.port);
        opts.set_keep_alive(c.keep_alive.max(Duration::from_secs(5)))
            .set_credentials(c.username.clone(), c.password.clone())
            .set_clean_session(false)
            .set_manual_acks(true)
            .set_max_packet_size(32 << 20, 32 << 20);
        let (client, mut conn) = Client::new(opts, 256);
        let _ = client.try_subscribe(shared_samples_filter(&c.group, &c.fleet), QoS::AtLeastOnce);
        let _ = client.try_subscribe(all_state_filter(&c.fleet), QoS::AtLeastOnce);
        let mut connected = false;
        loop {
            if self.stopped() {
                let _ = client.try_disconnect();
                for _ in 0..4 {
                    if conn.recv_timeout(Duration::from_millis(50)).is_err() {
                        break;
                    }
                }
                return connected;
            }
            let wait = Duration::from_millis(if connected { 50 } else { 10_000 });
            let ev = match conn.recv_timeout(wait) {
                Ok(Ok(ev)) => ev,
                Ok(Err(e)) => {
                    let mut s = lock(&self.stats);
                    s.connected = false;
                    s.failures += 1;
                    let m = e.to_string();
                    let new = s.last_error.as_deref() != Some(&m) || connected;
                    s.last_error = Some(m.clone());
                    drop(s);
                    if new {
                        self.log(&format!("connection lost or refused: {m}"));
                    }
                    return connected;
                }
                Err(RecvTimeoutError::Timeout) if connected => continue,
                Err(_) => {
                    lock(&self.stats).failures += 1;
                    return connected;
                }
            };
            match ev {
                Event::Incoming(Packet::ConnAck(_)) => {
                    connected = true;
                    let mut s = lock(&self.stats);
                    s.connected = true;
                    s.connects += 1;
                    drop(s);
                    self.log("connected");
                }
                Event::Incoming(Packet::Publish(p)) => {
                    self.on_publish(&client, &p);
                    // Acknowledged only now: the sample is in the replay
                    // buffer (and the audit log), or was counted as bad.
                    let _ = client.try_ack(&p);
                }
                _ => {}
            }
        }
    }

    fn device(&mut self, name: &str) -> &mut Device {
        if !self.devices.contains_key(name) {
            let learner = (self.teacher)()
                .and_then(|t| Learner::new(&self.student, t, self.cfg.learner.clone()));
            let learner = match learner {
                Ok(l) => Some(l),
                Err(e) => {
                    let mut s = lock(&self.stats);
                    s.learner_errors += 1;
                    s.last_error = Some(format!("learner for {name}: {e:#}"));
                    drop(s);
                    self.log(&format!("cannot create a learner for {name}: {e:#}"));
                    None
                }
            };
            self.devices.insert(
                name.to_string(),
                Device {
                    learner,
                    seen: Dedup::default(),
                    new_since_train: 0,
                    own: None,
                },
            );
        }
        self.devices.get_mut(name).expect("inserted above")
    }

    fn on_publish(&mut self, client: &Client, p: &Publish) {
        let Some((device, kind)) = parse_topic(&p.topic, &self.cfg.fleet) else {
            lock(&self.stats).wrong_topic += 1;
            return;
        };
        let device = device.to_string();
        match kind {
            TopicKind::Samples => self.on_sample(client, &device, &p.payload),
            TopicKind::State => self.on_state(&device, &p.payload),
            // Not subscribed; a broker that sends one anyway is ignored.
            TopicKind::Affine => {}
        }
    }

    fn on_sample(&mut self, client: &Client, device: &str, payload: &[u8]) {
        let msg = match decode_sample(payload) {
            Ok(m) => m,
            Err(e) => {
                let mut s = lock(&self.stats);
                s.malformed += 1;
                s.last_error = Some(format!("from {device}: {e}"));
                drop(s);
                self.log(&format!("skipped a message from {device}: {e}"));
                return;
            }
        };
        if msg.fingerprint != self.student.fingerprint()
            || msg.input.len() != self.student.input_len(0)
        {
            lock(&self.stats).wrong_model += 1;
            return;
        }
        let fresh = self.device(device).seen.insert(msg.boot, msg.seq);
        if !fresh {
            lock(&self.stats).duplicates += 1;
            return;
        }
        if let Some(f) = &mut self.log_file {
            // The audit line must be on disk before the broker forgets the
            // sample, or a crash would make a delivered sample look lost.
            let _ = writeln!(f, "{device} {} {}", msg.boot, msg.seq).and_then(|_| f.flush());
        }
        {
            let mut s = lock(&self.stats);
            s.received += 1;
            s.devices.entry(device.to_string()).or_default().received += 1;
        }
        let (train_every, steps, min_replay) = (
            self.cfg.train_every.max(1),
            self.cfg.steps,
            self.cfg.min_replay,
        );
        let d = self.device(device);
        let Some(learner) = d.learner.as_mut() else {
            return;
        };
        learner.push(msg.input.to_f32(), msg.entropy);
        d.new_since_train += 1;
        if d.new_since_train < train_every || learner.replay_len() < min_replay {
            return;
        }
        d.new_since_train = 0;
        let ts = learner.train(steps);
        let layers = learner.layers();
        let state = learner.state();
        let version = {
            let mut s = lock(&self.stats);
            let ds = s.devices.entry(device.to_string()).or_default();
            ds.trainings += 1;
            ds.last_loss = ts.loss;
            ds.version + 1
        };
        let blob = match build_patch(&self.student, version, &layers, &self.key) {
            Ok(b) => b,
            Err(e) => {
                let mut s = lock(&self.stats);
                s.learner_errors += 1;
                s.last_error = Some(format!("patch for {device}: {e}"));
                return;
            }
        };
        let state = match build_patch(&self.student, version, &state, &self.key) {
            Ok(b) => b,
            Err(e) => {
                let mut s = lock(&self.stats);
                s.learner_errors += 1;
                s.last_error = Some(format!("state for {device}: {e}"));
                return;
            }
        };
        let len = blob.len();
        self.device(device).own = Some(hash(&state));
        // The state first: a worker that sees the patch version also finds
        // the state it came from (QoS 1 keeps one client's order).
        let state_len = state.len() as u64;
        let st_topic = state_topic(&self.cfg.fleet, device);
        let topic = affine_topic(&self.cfg.fleet, device);
        if client
            .try_publish(st_topic, QoS::AtLeastOnce, true, state)
            .and_then(|_| client.try_publish(topic, QoS::AtLeastOnce, true, blob))
            .is_ok()
        {
            let mut s = lock(&self.stats);
            s.bytes_published += len as u64 + state_len;
            s.last_patch_bytes = len;
            let ds = s.devices.entry(device.to_string()).or_default();
            ds.published += 1;
            ds.version = version;
            drop(s);
            self.log(&format!(
                "published patch v{version} for {device} ({len} bytes, loss {:.4})",
                ts.loss
            ));
        }
    }

    fn on_state(&mut self, device: &str, blob: &[u8]) {
        if blob.is_empty() {
            return;
        }
        let seen = lock(&self.stats)
            .devices
            .get(device)
            .map_or(0, |d| d.version);
        // Accept the same version as the highest seen (see the module docs).
        let floor = seen.saturating_sub(1);
        let vk = self.key.verifying_key();
        let patch = match verify_patch(blob, &self.student, &self.base, floor, &vk, 64 << 20) {
            Ok(p) => p,
            Err(e) => {
                // An older patch arriving late is normal; only count others.
                let msg = e.to_string();
                if !msg.contains("version") {
                    let mut s = lock(&self.stats);
                    s.bad_patches += 1;
                    s.last_error = Some(format!("state for {device}: {msg}"));
                }
                return;
            }
        };
        let h = hash(blob);
        let d = self.device(device);
        let own = d.own == Some(h);
        let r = d.learner.as_mut().map(|l| l.set_layers(&patch.layers));
        let mut s = lock(&self.stats);
        if let Some(Err(e)) = r {
            s.learner_errors += 1;
            s.last_error = Some(format!("adopting the state of {device}: {e:#}"));
        }
        let ds = s.devices.entry(device.to_string()).or_default();
        ds.version = ds.version.max(patch.version);
        if !own {
            ds.adopted += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Dedup;

    #[test]
    fn dedup_is_bounded_and_forgets_oldest_first() {
        let mut d = Dedup::default();
        assert!(d.insert(1, 5));
        assert!(!d.insert(1, 5));
        assert!(d.insert(2, 5));
        for s in 0..Dedup::PER_BOOT as u64 + 10 {
            d.insert(3, 100 + s);
        }
        assert_eq!(d.boots[2].1.len(), Dedup::PER_BOOT);
        // The oldest seqs were forgotten (accepted again), recent ones not.
        assert!(d.insert(3, 100));
        assert!(!d.insert(3, 100 + Dedup::PER_BOOT as u64 + 9));
        for b in 10..10 + Dedup::BOOTS as u64 {
            d.insert(b, 0);
        }
        assert_eq!(d.boots.len(), Dedup::BOOTS);
        assert!(d.insert(1, 5), "boot 1 was forgotten");
    }
}
