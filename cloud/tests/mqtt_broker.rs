//! The MQTT transport against a real mosquitto broker on loopback, started
//! by each test through the harness: ACL confinement, queueing across a
//! broker restart, two workers on one shared subscription, malformed
//! messages.
//!
//! mosquitto must be installed (`scripts/test.sh` installs it). Only with
//! `SHIFTNN_SKIP_MQTT_TESTS=1` and no mosquitto do these tests skip, loudly.
//! Waits poll for a condition with a generous deadline; nothing asserts on
//! elapsed time.

use rumqttc::{Client, Event, MqttOptions, Packet, QoS, SubscribeReasonCode};
use shiftnn_cloud::broker::{find_mosquitto, Broker, BrokerUsers};
use shiftnn_cloud::mqtt::{affine_topic, samples_topic};
use shiftnn_cloud::worker::{TeacherFactory, Worker, WorkerConfig};
use shiftnn_cloud::Teacher;
use shiftnn_runtime::adapt::mqtt::{EdgeLink, LinkConfig};
use shiftnn_runtime::adapt::{
    build_patch, encode_sample, PatchLayer, SampleInput, SampleMsg, SharedParams, SigningKey,
    UploadQueue,
};
use shiftnn_runtime::{Model, Session};
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const MODEL: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/fixtures/firmware/fmnist_b4_int8.shift"
);
const FLEET: &str = "f";

fn have_broker() -> bool {
    if find_mosquitto().is_some() {
        return true;
    }
    if std::env::var("SHIFTNN_SKIP_MQTT_TESTS").as_deref() == Ok("1") {
        eprintln!("\n!!! SKIPPED: mosquitto is not installed and SHIFTNN_SKIP_MQTT_TESTS=1 !!!\n");
        return false;
    }
    panic!("mosquitto is not installed (apt-get install mosquitto); set SHIFTNN_SKIP_MQTT_TESTS=1 to skip");
}

fn users(devices: &[&str]) -> BrokerUsers {
    BrokerUsers {
        fleet: FLEET.into(),
        devices: devices
            .iter()
            .map(|d| (d.to_string(), format!("pw-{d}")))
            .collect(),
        cloud_user: "cloud".into(),
        cloud_password: "pw-cloud".into(),
    }
}

/// Poll `f` until true; panics with `what` after 60 s (a hang, not a
/// timing assertion).
fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !f() {
        assert!(Instant::now() < deadline, "gave up waiting: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[derive(Default)]
struct Seen {
    publishes: Vec<(String, Vec<u8>)>,
    subacks: Vec<Vec<SubscribeReasonCode>>,
    connacks: usize,
    errors: usize,
}

/// A plain MQTT client whose events a thread records.
struct Probe {
    client: Client,
    seen: Arc<Mutex<Seen>>,
}

impl Probe {
    /// A probe that (re)subscribes to `subs` on every connection, so that
    /// it also follows a broker that lost its sessions in a crash.
    fn subscribed(b: &Broker, id: &str, user: &str, pw: &str, subs: &[String]) -> Probe {
        Self::with(b, id, user, pw, true, subs.to_vec())
    }

    fn new(b: &Broker, id: &str, user: &str, pw: &str, clean: bool) -> Probe {
        Self::with(b, id, user, pw, clean, Vec::new())
    }

    fn with(b: &Broker, id: &str, user: &str, pw: &str, clean: bool, subs: Vec<String>) -> Probe {
        let mut o = MqttOptions::new(id, b.host(), b.port());
        o.set_credentials(user, pw)
            .set_clean_session(clean)
            .set_keep_alive(Duration::from_secs(5))
            .set_max_packet_size(1 << 24, 1 << 24);
        let (client, mut conn) = Client::new(o, 64);
        let seen = Arc::new(Mutex::new(Seen::default()));
        let s = seen.clone();
        let c2 = client.clone();
        std::thread::spawn(move || {
            for ev in conn.iter() {
                let mut g = s.lock().unwrap();
                match ev {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        g.publishes.push((p.topic.clone(), p.payload.to_vec()))
                    }
                    Ok(Event::Incoming(Packet::SubAck(a))) => g.subacks.push(a.return_codes),
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        g.connacks += 1;
                        for t in &subs {
                            let _ = c2.try_subscribe(t.clone(), QoS::AtLeastOnce);
                        }
                    }
                    Ok(_) => {}
                    Err(_) => {
                        g.errors += 1;
                        drop(g);
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            }
        });
        Probe { client, seen }
    }

    fn count(&self, topic: &str) -> usize {
        let g = self.seen.lock().unwrap();
        g.publishes.iter().filter(|(t, _)| t == topic).count()
    }
}

fn model() -> Arc<Model<'static>> {
    Arc::new(Model::open(MODEL).expect("fixture model"))
}

fn sample(m: &Model, boot: u64, seq: u64) -> Vec<u8> {
    let n = m.input_len(0);
    let data: Vec<i8> = (0..n)
        .map(|i| ((i as u64 * 31 + seq * 7) % 200) as i8)
        .collect();
    encode_sample(&SampleMsg {
        fingerprint: m.fingerprint(),
        boot,
        seq,
        entropy: 0.2,
        probs: vec![0.1; m.output_len(0)],
        shape: m.graph().values[m.graph().inputs[0]]
            .shape
            .iter()
            .map(|&d| d as u32)
            .collect(),
        input: SampleInput::I8 { scale: 0.01, data },
    })
}

/// The model's own float output as the teacher (transport tests only need
/// some teacher).
struct SelfTeacher(Arc<Model<'static>>);
impl Teacher for SelfTeacher {
    fn logits(&mut self, input: &[f32]) -> anyhow::Result<Vec<f32>> {
        let mut s = Session::new(&self.0).map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut y = vec![0f32; self.0.output_len(0)];
        s.run(&[input], &mut [&mut y])
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(y)
    }
}

fn key() -> SigningKey {
    SigningKey::from_bytes(&[7u8; 32])
}

fn worker(b: &Broker, m: &Arc<Model<'static>>, id: &str, train_every: usize) -> Worker {
    let mut cfg = WorkerConfig::new(
        b.host(),
        b.port(),
        "cloud",
        "pw-cloud",
        id,
        FLEET,
        "workers",
    );
    cfg.train_every = train_every;
    cfg.min_replay = 1;
    cfg.steps = 1;
    cfg.log = false;
    let mm = m.clone();
    let t: TeacherFactory =
        Arc::new(move || Ok(Box::new(SelfTeacher(mm.clone())) as Box<dyn Teacher>));
    Worker::start(cfg, m.clone(), t, key()).expect("worker")
}

#[test]
fn acl_confines_devices_and_passwords_are_checked() {
    if !have_broker() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let b = Broker::start(dir.path(), &users(&["d1", "d2"])).unwrap();
    let m = model();

    let cloud = Probe::new(&b, "cloud-probe", "cloud", "pw-cloud", true);
    cloud
        .client
        .subscribe(format!("shiftnn/{FLEET}/+/samples"), QoS::AtLeastOnce)
        .unwrap();
    wait_for("cloud suback", || {
        cloud.seen.lock().unwrap().subacks.len() == 1
    });
    // The cloud writes both devices' patches (retained).
    // The model's own parameters, so the patches are valid ones.
    let own: Vec<PatchLayer> = shiftnn_runtime::Prepared::new(&m)
        .unwrap()
        .norms
        .into_iter()
        .map(|(prefix, n)| PatchLayer {
            prefix,
            gamma: n.gamma,
            beta: n.beta,
            mean: None,
            var: None,
        })
        .collect();
    let blob = |v| build_patch(&m, v, &own, &key()).unwrap();
    for (d, v) in [("d1", 1), ("d2", 2)] {
        cloud
            .client
            .publish(affine_topic(FLEET, d), QoS::AtLeastOnce, true, blob(v))
            .unwrap();
    }

    let d1 = Probe::new(&b, "d1", "d1", "pw-d1", true);
    // Reading another device's patch: refused, and nothing arrives.
    d1.client
        .subscribe(affine_topic(FLEET, "d2"), QoS::AtLeastOnce)
        .unwrap();
    d1.client
        .subscribe(affine_topic(FLEET, "d1"), QoS::AtLeastOnce)
        .unwrap();
    wait_for("d1 subacks", || d1.seen.lock().unwrap().subacks.len() == 2);
    let subacks = d1.seen.lock().unwrap().subacks.clone();
    assert!(
        matches!(subacks[1][0], SubscribeReasonCode::Success(_)),
        "own patch topic"
    );
    // mosquitto 2.0 may grant the SUBSCRIBE and filter at delivery instead;
    // either way d2's retained patch, which would come before d1's (the
    // subscriptions are handled in order), must never arrive.
    wait_for("d1 gets its own retained patch", || {
        d1.count(&affine_topic(FLEET, "d1")) == 1
    });

    // Publishing as another device: dropped by the broker. The legitimate
    // message sent after it on the same connection arrives; the forged
    // one, had the broker let it through, would have arrived first.
    d1.client
        .publish(
            samples_topic(FLEET, "d2"),
            QoS::AtLeastOnce,
            false,
            sample(&m, 1, 0),
        )
        .unwrap();
    d1.client
        .publish(
            affine_topic(FLEET, "d1"),
            QoS::AtLeastOnce,
            true,
            vec![1, 2, 3],
        )
        .unwrap();
    d1.client
        .publish(
            samples_topic(FLEET, "d1"),
            QoS::AtLeastOnce,
            false,
            sample(&m, 1, 1),
        )
        .unwrap();
    wait_for("the cloud gets d1's sample", || {
        cloud.count(&samples_topic(FLEET, "d1")) == 1
    });
    assert_eq!(
        cloud.count(&samples_topic(FLEET, "d2")),
        0,
        "forged sample delivered"
    );
    assert_eq!(
        d1.count(&affine_topic(FLEET, "d2")),
        0,
        "d2's patch leaked to d1"
    );

    // A device may not overwrite its own patch either: a new subscriber to
    // d1's topic still gets the cloud's retained patch.
    let d1b = Probe::new(&b, "d1-again", "d1", "pw-d1", true);
    d1b.client
        .subscribe(affine_topic(FLEET, "d1"), QoS::AtLeastOnce)
        .unwrap();
    wait_for("retained patch", || {
        d1b.count(&affine_topic(FLEET, "d1")) == 1
    });
    assert_eq!(d1b.seen.lock().unwrap().publishes[0].1, blob(1));

    // A wrong password is refused at connect.
    let bad = Probe::new(&b, "d2", "d2", "wrong", true);
    wait_for("refused connect", || bad.seen.lock().unwrap().errors > 0);
    assert_eq!(bad.seen.lock().unwrap().connacks, 0);
}

#[test]
fn device_queues_while_the_broker_is_down_and_delivers_after_restart() {
    if !have_broker() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut b = Broker::start(dir.path().join("broker"), &users(&["d1"])).unwrap();
    let m = model();
    // The device's queue, not the broker, keeps what was not acknowledged:
    // the broker is killed (it loses its sessions) while nothing is in
    // flight, and the cloud probe subscribes again when it reconnects.
    let cloud = Probe::subscribed(
        &b,
        "cloud-probe",
        "cloud",
        "pw-cloud",
        &[samples_topic(FLEET, "d1")],
    );
    wait_for("cloud suback", || {
        cloud.seen.lock().unwrap().subacks.len() == 1
    });

    let cap = 20;
    let queue = Arc::new(UploadQueue::with_spool(cap, dir.path().join("spool"), false).unwrap());
    let params = Arc::new(SharedParams::new(&m).unwrap());
    params.trust(key().verifying_key(), 0);
    let mut lc = LinkConfig::new(b.host(), b.port(), FLEET, "d1", "d1", "pw-d1");
    lc.backoff_max = Duration::from_millis(500);
    lc.log = false;
    let link = EdgeLink::start(lc, queue.clone(), m.clone(), params.clone());
    let boot = 99;
    for _ in 0..10 {
        let seq = queue.stats().pushed;
        queue.push(sample(&m, boot, seq));
    }
    wait_for("first 10 delivered", || {
        queue.is_empty() && link.stats().acked == 10
    });

    b.kill().unwrap();
    wait_for("link notices the broker is gone", || {
        !link.stats().connected
    });
    // Inference goes on and samples queue up; 40 into a queue of 20 drops
    // the 20 oldest (the queue's policy).
    let mut session = Session::new(&m).unwrap();
    session.set_shared(params.clone()).unwrap();
    let mut y = vec![0f32; m.output_len(0)];
    let x = vec![0.1f32; m.input_len(0)];
    for _ in 0..40 {
        session.run(&[&x], &mut [&mut y]).unwrap();
        let seq = queue.stats().pushed;
        queue.push(sample(&m, boot, seq));
    }
    assert_eq!(queue.stats().dropped, 20);
    assert!(!link.stats().connected);

    b.restart().unwrap();
    wait_for("queue drained after restart", || queue.is_empty());
    let st = queue.stats();
    let want: BTreeSet<u64> = (0..10).chain(30..50).collect();
    wait_for("cloud received everything", || {
        let g = cloud.seen.lock().unwrap();
        let got: BTreeSet<u64> = g
            .publishes
            .iter()
            .map(|(_, p)| shiftnn_runtime::adapt::decode_sample(p).unwrap().seq)
            .collect();
        got == want
    });
    assert_eq!(
        st.pushed - st.dropped,
        want.len() as u64,
        "lost beyond the drop-oldest policy"
    );
    assert!(link.stats().connects >= 2);
    link.stop();
}

#[test]
fn two_workers_share_the_samples_and_agree_on_patch_versions() {
    if !have_broker() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let b = Broker::start(dir.path(), &users(&["d1"])).unwrap();
    let m = model();
    let w1 = worker(&b, &m, "w1", 4);
    let w2 = worker(&b, &m, "w2", 4);
    wait_for("workers connected", || {
        w1.stats().connected && w2.stats().connected
    });

    let queue = Arc::new(UploadQueue::new(1000));
    let params = Arc::new(SharedParams::new(&m).unwrap());
    params.trust(key().verifying_key(), 0);
    let mut lc = LinkConfig::new(b.host(), b.port(), FLEET, "d1", "d1", "pw-d1");
    lc.log = false;
    let link = EdgeLink::start(lc, queue.clone(), m.clone(), params.clone());
    // A malformed message from the device is counted and skipped.
    let raw = Probe::new(&b, "d1-raw", "d1", "pw-d1", true);
    raw.client
        .publish(
            samples_topic(FLEET, "d1"),
            QoS::AtLeastOnce,
            false,
            b"SNS\x01garbage".to_vec(),
        )
        .unwrap();
    let n = 64;
    for seq in 0..n {
        queue.push(sample(&m, 5, seq));
    }
    wait_for("all samples received once", || {
        w1.stats().received + w2.stats().received == n
    });
    wait_for("malformed counted", || {
        w1.stats().malformed + w2.stats().malformed == 1
    });
    let (s1, s2) = (w1.stats(), w2.stats());
    assert!(
        s1.received > 0 && s2.received > 0,
        "shared subscription: {} / {}",
        s1.received,
        s2.received
    );
    assert_eq!(s1.duplicates + s2.duplicates, 0);

    // Patches: both workers published, and they settle on the retained
    // version, which the device applied.
    let probe = Probe::new(&b, "cloud-probe", "cloud", "pw-cloud", true);
    probe
        .client
        .subscribe(affine_topic(FLEET, "d1"), QoS::AtLeastOnce)
        .unwrap();
    let base = shiftnn_runtime::Prepared::new(&m).unwrap();
    let vk = key().verifying_key();
    let version_of = |blob: &[u8]| -> u64 {
        shiftnn_runtime::adapt::verify_patch(blob, &m, &base, 0, &vk, 1 << 24)
            .unwrap()
            .version
    };
    wait_for("converged", || {
        let g = probe.seen.lock().unwrap();
        let Some((_, last)) = g.publishes.last() else {
            // Printed only if the test fails (the harness captures it).
            eprintln!(
                "probe: {} connacks, {} errors; workers {:?} / {:?}",
                g.connacks,
                g.errors,
                w1.stats(),
                w2.stats()
            );
            return false;
        };
        let v = version_of(last);
        let (a, c) = (w1.stats(), w2.stats());
        eprintln!(
            "retained v{v}; workers {:?} / {:?}; device {:?}",
            a.devices.get("d1"),
            c.devices.get("d1"),
            params.patch_stats()
        );
        a.devices["d1"].version == v
            && c.devices["d1"].version == v
            && params.patch_stats().version == v
            && a.devices["d1"].trainings + c.devices["d1"].trainings >= (n / 4) - 1
            // Each worker took over the other's learner state from the
            // retained state topic at least once.
            && a.devices["d1"].adopted > 0
            && c.devices["d1"].adopted > 0
    });
    let (a, c) = (w1.stats(), w2.stats());
    let published = a.devices["d1"].published + c.devices["d1"].published;
    let v = params.patch_stats().version;
    assert!(a.devices["d1"].published > 0 && c.devices["d1"].published > 0);
    // Each version number is used once, except when both workers publish
    // the next one at the same moment: versions run without gaps.
    assert!(
        v <= published && v * 2 >= published,
        "version {v}, {published} patches"
    );
    assert!(link.stats().patches_applied >= 1);
    link.stop();
}
