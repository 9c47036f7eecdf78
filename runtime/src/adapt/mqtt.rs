//! The device's MQTT link (feature `mqtt`): uploads queued samples and
//! applies the patches the cloud publishes.
//!
//! [`EdgeLink::start`] runs one background thread that
//!
//! - drains the [`UploadQueue`] from the front: each queued sample is
//!   published with QoS 1 on `shiftnn/<fleet>/<device>/samples` and
//!   acknowledged in the queue only when the broker's PUBACK for it arrives,
//!   so a sample in flight when the connection drops stays queued and is
//!   sent again (at least once; the cloud de-duplicates by `(boot, seq)`);
//! - subscribes (QoS 1) to the retained `shiftnn/<fleet>/<device>/affine`
//!   and hands each patch to [`SharedParams::apply_patch`]; a rejected patch
//!   is counted and logged and the old parameters stay. The retained patch
//!   comes again on every reconnect: the same bytes as the last applied
//!   patch are counted as a duplicate, not as a rejection;
//! - when the connection fails or cannot be made, drops the whole client
//!   (so no hidden client-side state holds samples) and reconnects after an
//!   exponential backoff, then resends everything still queued.
//!
//! Inference never waits on the link: it only pushes into the queue, whose
//! drop-oldest policy bounds memory and is counted there.
//! Authentication is by username and password (the broker's password file
//! and ACL decide what the device may publish and read).

use super::queue::UploadQueue;
use super::shared::SharedParams;
use crate::format::Fnv64;
use crate::model::Model;
use rumqttc::{
    Client, ConnectionError, Event, MqttOptions, Outgoing, Packet, QoS, RecvTimeoutError,
    SubscribeReasonCode,
};
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::string::{String, ToString};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use std::vec::Vec;

/// Topic a device publishes its samples on.
pub fn samples_topic(fleet: &str, device: &str) -> String {
    std::format!("shiftnn/{fleet}/{device}/samples")
}

/// Retained topic the cloud publishes a device's patch on.
pub fn affine_topic(fleet: &str, device: &str) -> String {
    std::format!("shiftnn/{fleet}/{device}/affine")
}

/// Settings of an [`EdgeLink`].
#[derive(Clone, Debug)]
pub struct LinkConfig {
    /// Broker host.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// Fleet name (second topic level).
    pub fleet: String,
    /// Device name (third topic level).
    pub device: String,
    /// MQTT client id (default: `shiftnn-<device>`).
    pub client_id: String,
    /// Username (the broker's password file).
    pub username: String,
    /// Password.
    pub password: String,
    /// Keep-alive interval (default 5 s; it bounds how long a dead broker
    /// goes unnoticed on an idle link).
    pub keep_alive: Duration,
    /// First reconnect delay (default 100 ms).
    pub backoff_min: Duration,
    /// Largest reconnect delay (default 5 s).
    pub backoff_max: Duration,
    /// After each CONNACK, samples wait this long before being published
    /// (default 1 s; they stay queued, inference is not affected). A
    /// mosquitto that has just restarted restores persistent sessions but
    /// drops what arrives for them before their clients reconnect
    /// (eclipse-mosquitto/mosquitto#769; reproduced with 2.0.11 for plain
    /// and shared subscriptions): in one `shiftnn adapt-demo` run its
    /// `log_type all` log shows 159 samples PUBACKed and never delivered.
    /// The device cannot see that loss, so it gives the cloud workers,
    /// which retry at least every second, time to come back first. This
    /// narrows the window; only an end-to-end acknowledgement from the
    /// cloud would close it.
    pub resume_delay: Duration,
    /// Samples published and not yet acknowledged, at most (default 32).
    pub max_inflight: usize,
    /// Largest MQTT packet sent or received (default 8 MiB).
    pub max_packet: usize,
    /// Log connection changes and patch rejections to stderr.
    pub log: bool,
}

impl LinkConfig {
    /// Defaults for one device.
    pub fn new(
        host: impl Into<String>,
        port: u16,
        fleet: impl Into<String>,
        device: impl Into<String>,
        username: impl Into<String>,
        password: impl Into<String>,
    ) -> LinkConfig {
        let device = device.into();
        LinkConfig {
            host: host.into(),
            port,
            fleet: fleet.into(),
            client_id: std::format!("shiftnn-{device}"),
            device,
            username: username.into(),
            password: password.into(),
            keep_alive: Duration::from_secs(5),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            resume_delay: Duration::from_secs(1),
            max_inflight: 32,
            max_packet: 8 << 20,
            log: true,
        }
    }
}

/// Counters of an [`EdgeLink`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LinkStats {
    /// Connected to the broker now.
    pub connected: bool,
    /// Successful connections (CONNACK accepted).
    pub connects: u64,
    /// Connection attempts or connections that failed.
    pub failures: u64,
    /// Sample publishes handed to the client (resends included).
    pub published: u64,
    /// Samples acknowledged by the broker (and removed from the queue).
    pub acked: u64,
    /// Payload bytes of sample publishes (resends included).
    pub bytes_up: u64,
    /// Payload bytes of patches received.
    pub bytes_down: u64,
    /// Patches received (duplicates included).
    pub patches_received: u64,
    /// Patches applied.
    pub patches_applied: u64,
    /// Patches rejected (the old parameters stayed).
    pub patches_rejected: u64,
    /// The retained patch already applied, received again on reconnect.
    pub patches_duplicate: u64,
    /// Apply time of each applied patch (verify and swap), microseconds.
    pub apply_micros: Vec<u64>,
    /// Size of the last patch received, bytes.
    pub last_patch_bytes: usize,
    /// The last connection error.
    pub last_error: Option<String>,
    /// The last patch rejection.
    pub last_patch_error: Option<String>,
    /// The broker refused the affine subscription (ACL).
    pub subscribe_refused: bool,
}

#[derive(Debug, Default)]
struct Shared {
    stats: Mutex<LinkStats>,
    applying: AtomicBool,
    applies: AtomicU64,
}

impl Shared {
    fn stats(&self) -> MutexGuard<'_, LinkStats> {
        // Counters only: a poisoned lock still holds usable numbers.
        self.stats.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The background MQTT link of one device. Dropping it stops the thread.
#[derive(Debug)]
pub struct EdgeLink {
    stop: Arc<AtomicBool>,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

struct Ctx {
    cfg: LinkConfig,
    queue: Arc<UploadQueue>,
    model: Arc<Model<'static>>,
    params: Arc<SharedParams>,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    samples: String,
    affine: String,
    last_applied: Option<u64>,
}

impl EdgeLink {
    /// Start the link thread. `params` must trust the cloud's key
    /// ([`SharedParams::trust`]) for patches to be accepted.
    pub fn start(
        cfg: LinkConfig,
        queue: Arc<UploadQueue>,
        model: Arc<Model<'static>>,
        params: Arc<SharedParams>,
    ) -> EdgeLink {
        let stop = Arc::new(AtomicBool::new(false));
        let shared = Arc::new(Shared::default());
        let mut ctx = Ctx {
            samples: samples_topic(&cfg.fleet, &cfg.device),
            affine: affine_topic(&cfg.fleet, &cfg.device),
            cfg,
            queue,
            model,
            params,
            shared: shared.clone(),
            stop: stop.clone(),
            last_applied: None,
        };
        let thread = std::thread::Builder::new()
            .name("shiftnn-mqtt".into())
            .spawn(move || ctx.run())
            .ok();
        if thread.is_none() {
            shared.stats().last_error = Some("cannot spawn the MQTT thread".into());
        }
        EdgeLink {
            stop,
            shared,
            thread,
        }
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> LinkStats {
        self.shared.stats().clone()
    }

    /// True while a patch is being verified and swapped in.
    pub fn applying(&self) -> bool {
        self.shared.applying.load(Ordering::Acquire)
    }

    /// Patch applies started so far (with [`EdgeLink::applying`], lets a
    /// caller tell whether an inference overlapped an apply).
    pub fn applies_started(&self) -> u64 {
        self.shared.applies.load(Ordering::Acquire)
    }

    /// Stop the thread (disconnecting from the broker) and wait for it.
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

impl Drop for EdgeLink {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// How one connection ended.
enum End {
    Stopped,
    /// Failed; `true` if it had been connected (resets the backoff).
    Failed(bool),
}

impl Ctx {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    fn log(&self, m: &str) {
        if self.cfg.log {
            std::eprintln!("shiftnn mqtt [{}]: {m}", self.cfg.device);
        }
    }

    fn run(&mut self) {
        let mut backoff = self.cfg.backoff_min;
        loop {
            match self.connection() {
                End::Stopped => break,
                End::Failed(was_connected) => {
                    if was_connected {
                        backoff = self.cfg.backoff_min;
                    }
                }
            }
            // Sleep in small slices so that stop() is prompt.
            let until = Instant::now() + backoff;
            while Instant::now() < until {
                if self.stopped() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10).min(backoff));
            }
            backoff = (backoff * 2).min(self.cfg.backoff_max);
        }
        self.shared.stats().connected = false;
    }

    /// One client, from connect to failure or stop.
    fn connection(&mut self) -> End {
        let c = &self.cfg;
        let mut opts = MqttOptions::new(c.client_id.clone(), c.host.clone(), c.port);
        opts.set_keep_alive(c.keep_alive.max(Duration::from_secs(1)))
            .set_credentials(c.username.clone(), c.password.clone())
            .set_clean_session(true)
            .set_max_packet_size(c.max_packet, c.max_packet)
            .set_inflight(c.max_inflight.clamp(1, 1000) as u16 + 8);
        let (client, mut conn) = Client::new(opts, 64);
        // Queued in the client; sent right after the CONNACK.
        let _ = client.try_subscribe(self.affine.clone(), QoS::AtLeastOnce);
        let mut connected = false;
        let mut resume_at = Instant::now();
        // Published, waiting for the client to number them (in order).
        let mut unnumbered: VecDeque<u64> = VecDeque::new();
        // Packet id -> queue sequence number, waiting for PUBACK.
        let mut inflight: HashMap<u16, u64> = HashMap::new();
        // Everything published on this connection and not yet acknowledged.
        let mut sent: BTreeSet<u64> = BTreeSet::new();
        loop {
            if self.stopped() {
                let _ = client.try_disconnect();
                // Let the DISCONNECT go out; a few polls at most.
                for _ in 0..4 {
                    if conn.recv_timeout(Duration::from_millis(50)).is_err() {
                        break;
                    }
                }
                self.shared.stats().connected = false;
                return End::Stopped;
            }
            if connected && Instant::now() >= resume_at {
                self.publish_more(&client, &mut unnumbered, &inflight, &mut sent);
            }
            // Connecting may take a while on a loaded machine: do not cut it
            // short; once connected, poll briefly to notice new samples.
            let wait = if connected {
                Duration::from_millis(20)
            } else {
                Duration::from_secs(10)
            };
            let ev = match conn.recv_timeout(wait) {
                Ok(Ok(ev)) => ev,
                Ok(Err(e)) => return self.failed(connected, &e),
                Err(RecvTimeoutError::Timeout) => {
                    if !connected {
                        return self.failed_msg(false, "timed out connecting".into());
                    }
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => return End::Failed(connected),
            };
            match ev {
                Event::Incoming(Packet::ConnAck(_)) => {
                    // rumqttc turns a refused CONNACK into an error, so this
                    // one was accepted.
                    connected = true;
                    resume_at = Instant::now() + self.cfg.resume_delay;
                    let mut s = self.shared.stats();
                    s.connected = true;
                    s.connects += 1;
                    drop(s);
                    self.log("connected");
                }
                Event::Outgoing(Outgoing::Publish(pkid)) => {
                    if let Some(seq) = unnumbered.pop_front() {
                        inflight.insert(pkid, seq);
                    }
                }
                Event::Incoming(Packet::PubAck(a)) => {
                    if let Some(seq) = inflight.remove(&a.pkid) {
                        sent.remove(&seq);
                        self.queue.ack(seq);
                        self.shared.stats().acked += 1;
                    }
                }
                Event::Incoming(Packet::SubAck(s))
                    if s.return_codes.contains(&SubscribeReasonCode::Failure) =>
                {
                    self.shared.stats().subscribe_refused = true;
                    self.log("the broker refused the affine subscription");
                }
                Event::Incoming(Packet::Publish(p)) if p.topic == self.affine => {
                    self.on_patch(&p.payload);
                }
                _ => {}
            }
        }
    }

    fn failed(&self, connected: bool, e: &ConnectionError) -> End {
        self.failed_msg(connected, e.to_string())
    }

    fn failed_msg(&self, connected: bool, m: String) -> End {
        let mut s = self.shared.stats();
        s.connected = false;
        s.failures += 1;
        // Log once per outage, not once per backoff round.
        let new = s.last_error.as_deref() != Some(&m) || connected;
        s.last_error = Some(m.clone());
        drop(s);
        if new {
            self.log(&std::format!("connection lost or refused: {m}"));
        }
        End::Failed(connected)
    }

    /// Publish queued samples not yet sent on this connection, keeping at
    /// most `max_inflight` unacknowledged.
    fn publish_more(
        &self,
        client: &Client,
        unnumbered: &mut VecDeque<u64>,
        inflight: &HashMap<u16, u64>,
        sent: &mut BTreeSet<u64>,
    ) {
        let busy = unnumbered.len() + inflight.len();
        let room = self.cfg.max_inflight.saturating_sub(busy);
        if room == 0 {
            return;
        }
        let front = self.queue.peek(sent.len() + room);
        // Samples dropped by the queue while in flight are forgotten here;
        // their PUBACK (if any) finds nothing to acknowledge.
        if let Some(first) = front.first() {
            while sent.first().is_some_and(|&s| s < first.seq) {
                sent.pop_first();
            }
        }
        let mut n = 0;
        for s in front {
            if n == room {
                break;
            }
            if sent.contains(&s.seq) {
                continue;
            }
            let len = s.payload.len() as u64;
            if client
                .try_publish(self.samples.clone(), QoS::AtLeastOnce, false, s.payload)
                .is_err()
            {
                break; // the request channel is full; next round
            }
            unnumbered.push_back(s.seq);
            sent.insert(s.seq);
            n += 1;
            let mut st = self.shared.stats();
            st.published += 1;
            st.bytes_up += len;
        }
    }

    fn on_patch(&mut self, blob: &[u8]) {
        {
            let mut s = self.shared.stats();
            s.patches_received += 1;
            s.bytes_down += blob.len() as u64;
            s.last_patch_bytes = blob.len();
        }
        if blob.is_empty() {
            return; // a cleared retained message
        }
        let mut h = Fnv64::default();
        h.update(blob);
        if self.last_applied == Some(h.0) {
            self.shared.stats().patches_duplicate += 1;
            return;
        }
        self.shared.applies.fetch_add(1, Ordering::AcqRel);
        self.shared.applying.store(true, Ordering::Release);
        let t = Instant::now();
        let r = self.params.apply_patch(&self.model, blob);
        let micros = t.elapsed().as_micros() as u64;
        self.shared.applying.store(false, Ordering::Release);
        match r {
            Ok(v) => {
                self.last_applied = Some(h.0);
                let mut s = self.shared.stats();
                s.patches_applied += 1;
                s.apply_micros.push(micros);
                drop(s);
                self.log(&std::format!(
                    "applied patch version {v} ({} bytes, {micros} us)",
                    blob.len()
                ));
            }
            Err(e) => {
                let m = e.to_string();
                let mut s = self.shared.stats();
                s.patches_rejected += 1;
                s.last_patch_error = Some(m.clone());
                drop(s);
                self.log(&std::format!("patch rejected, parameters unchanged: {m}"));
            }
        }
    }
}
