//! `shiftnn cloud`, `shiftnn adapt-demo` and the demo's hidden device
//! process `shiftnn adapt-device`: CEMA adaptation over MQTT.
//!
//! The demo runs everything on loopback as separate processes: a mosquitto
//! broker (the `shiftnn-cloud` harness), two `shiftnn cloud` workers and
//! four `shiftnn adapt-device` processes, each streaming the Fashion-MNIST
//! test split under one corruption. In the middle it stops and restarts the
//! broker and kills (SIGKILL) and restarts one worker. Each device writes a
//! JSON report; the workers append every sample they receive to an audit
//! log, from which the demo counts uploads lost beyond the queue's
//! drop-oldest policy.

use super::common::{self, argmax};
use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use shiftnn_cloud::broker::{Broker, BrokerUsers};
use shiftnn_cloud::worker::{TeacherFactory, Worker, WorkerConfig};
use shiftnn_cloud::{LearnerConfig, Teacher};
use shiftnn_converter::{ir, npy};
use shiftnn_runtime::adapt::mqtt::{EdgeLink, LinkConfig};
use shiftnn_runtime::adapt::select::{entropy, softmax};
use shiftnn_runtime::adapt::{
    build_patch, encode_sample, PatchLayer, SampleInput, SampleMsg, SelectConfig, Selector,
    SharedParams, SigningKey, UploadQueue, VerifyingKey,
};
use shiftnn_runtime::{Model, Op, Session};
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Fashion-MNIST normalization of the bundled data (python/fmnist_data.py).
const MEAN: f32 = 0.2860;
const STD: f32 = 0.3530;
/// The corruptions the demo applies, one per device.
pub const CORRUPTIONS: [&str; 4] = ["gaussian_noise", "blur", "contrast", "impulse_noise"];

// ---------------------------------------------------------------- shared

fn parse_broker(s: &str) -> Result<(String, u16)> {
    let (h, p) = s
        .rsplit_once(':')
        .ok_or_else(|| anyhow!("--broker {s}: expected HOST:PORT"))?;
    let port = p
        .parse()
        .map_err(|_| anyhow!("--broker {s}: bad port \"{p}\""))?;
    Ok((h.to_string(), port))
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    let s = s.trim();
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn read_key(path: &Path) -> Result<SigningKey> {
    let t = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let b = unhex(&t).filter(|b| b.len() == 32).ok_or_else(|| {
        anyhow!(
            "{}: expected 64 hex digits (an ed25519 seed)",
            path.display()
        )
    })?;
    let mut a = [0u8; 32];
    a.copy_from_slice(&b);
    Ok(SigningKey::from_bytes(&a))
}

fn random_bytes<const N: usize>() -> Result<[u8; N]> {
    use std::io::Read;
    let mut b = [0u8; N];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .context("reading /dev/urandom")?;
    Ok(b)
}

/// The float ONNX model as a teacher (the converter's reference executor).
struct OnnxTeacher {
    graph: Arc<ir::Graph>,
    input: String,
}

impl Teacher for OnnxTeacher {
    fn logits(&mut self, input: &[f32]) -> Result<Vec<f32>> {
        let mut out = shiftnn_converter::reference::run(&self.graph, &[(&self.input, input)])
            .map_err(|e| anyhow!("teacher: {e}"))?;
        if out.is_empty() {
            bail!("teacher: the ONNX model has no outputs");
        }
        Ok(out.swap_remove(0))
    }
}

fn onnx_teacher(path: &Path) -> Result<TeacherFactory> {
    let g = common::load_onnx(path)?;
    let input = g
        .inputs
        .first()
        .map(|(n, _)| n.clone())
        .ok_or_else(|| anyhow!("{}: no inputs", path.display()))?;
    let g = Arc::new(g);
    Ok(Arc::new(move || {
        Ok(Box::new(OnnxTeacher {
            graph: g.clone(),
            input: input.clone(),
        }) as Box<dyn Teacher>)
    }))
}

/// The float ONNX model as an adaptive teacher: converted in memory to a
/// float `.shift` with every weighted layer kept in f32 (the same function
/// as the ONNX model), then run by the cloud's float emulation with its
/// BatchNorm statistics re-estimated from each device's uploads.
fn adaptive_teacher(path: &Path, lc: &LearnerConfig) -> Result<TeacherFactory> {
    use shiftnn_converter::lower::{self, CalibMethod, ConvertOptions};
    let g = common::load_onnx(path)?;
    let keep = g
        .nodes
        .iter()
        .filter(|n| matches!(n.op, ir::Op::Conv { .. } | ir::Op::Linear { .. }))
        .map(|n| n.name.clone())
        .collect();
    let opts = ConvertOptions {
        bits: shiftnn_kernels::Bits::new(4).expect("4 bits"),
        mode: shiftnn_runtime::Mode::Float,
        keep: Some(keep),
        calib: None,
        calib_method: CalibMethod::MinMax,
        progress: None,
    };
    let (bytes, _) =
        lower::convert(&g, &opts).with_context(|| format!("{}: float teacher", path.display()))?;
    let model = Model::from_vec(&bytes).map_err(common::rt)?;
    shiftnn_cloud::teacher::adaptive_factory(&model, lc.stats_alpha, lc.stats_min_samples)
}

/// Apply `name` to one normalized 28x28 image (`s` seeds the noise).
pub fn corrupt(name: &str, x: &[f32], hw: usize, s: u64) -> Result<Vec<f32>> {
    let raw: Vec<f32> = x.iter().map(|v| v * STD + MEAN).collect();
    // splitmix64: deterministic per image, no dependency.
    let mut state = s.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0xdead_beef;
    let mut next = move || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    };
    let out: Vec<f32> = match name {
        "gaussian_noise" => raw
            .iter()
            .map(|&v| {
                // Box-Muller.
                let (u1, u2) = (next().max(1e-12), next());
                let n = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
                v + 0.4 * n as f32
            })
            .collect(),
        "blur" => {
            // 5x5 box blur, edges clamped.
            let w = hw;
            let h = raw.len() / w.max(1);
            let mut o = vec![0f32; raw.len()];
            for y in 0..h {
                for xx in 0..w {
                    let mut acc = 0.0;
                    for dy in -2i64..=2 {
                        for dx in -2i64..=2 {
                            let yy = (y as i64 + dy).clamp(0, h as i64 - 1) as usize;
                            let xc = (xx as i64 + dx).clamp(0, w as i64 - 1) as usize;
                            acc += raw[yy * w + xc];
                        }
                    }
                    o[y * w + xx] = acc / 25.0;
                }
            }
            o
        }
        "contrast" => {
            let m = raw.iter().sum::<f32>() / raw.len().max(1) as f32;
            raw.iter().map(|&v| (v - m) * 0.25 + m).collect()
        }
        "impulse_noise" => raw
            .iter()
            .map(|&v| {
                let r = next();
                if r < 0.1 {
                    0.0
                } else if r < 0.2 {
                    1.0
                } else {
                    v
                }
            })
            .collect(),
        "clean" => raw,
        other => bail!("unknown corruption \"{other}\" (one of {CORRUPTIONS:?} or clean)"),
    };
    Ok(out
        .into_iter()
        .map(|v| (v.clamp(0.0, 1.0) - MEAN) / STD)
        .collect())
}

/// Images `start..start+n` (wrapping) of `x`, corrupted.
fn stream(x: &npy::ArrayF32, per: usize, start: usize, n: usize, c: &str) -> Result<Vec<f32>> {
    let total = x.data.len() / per;
    let hw = *x.shape.last().unwrap_or(&28);
    let mut out = Vec::with_capacity(n * per);
    for i in 0..n {
        let k = (start + i) % total;
        out.extend(corrupt(
            c,
            &x.data[k * per..(k + 1) * per],
            hw,
            k as u64 + 1,
        )?);
    }
    Ok(out)
}

fn percentile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    s[((s.len() - 1) as f64 * q).round() as usize]
}

// ---------------------------------------------------------------- cloud

/// Arguments of `shiftnn cloud`.
#[derive(clap::Args, Debug)]
pub struct CloudArgs {
    /// Broker address.
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:1883")]
    pub broker: String,
    /// Fleet name (topics shiftnn/FLEET/+/samples and .../affine).
    #[arg(long)]
    pub fleet: String,
    /// The float ONNX teacher.
    #[arg(long, value_name = "M.onnx")]
    pub teacher: PathBuf,
    /// The .shift model the devices run (the student).
    #[arg(long, value_name = "M.shift")]
    pub student: PathBuf,
    /// ed25519 signing key: a file of 64 hex digits (the seed).
    #[arg(long, value_name = "FILE")]
    pub key: PathBuf,
    /// Broker username.
    #[arg(long, default_value = "cloud")]
    pub user: String,
    /// Broker password (or the SHIFTNN_MQTT_PASSWORD environment variable).
    #[arg(long, env = "SHIFTNN_MQTT_PASSWORD", hide_env_values = true)]
    pub password: String,
    /// MQTT client id; keep it across restarts (persistent session).
    #[arg(long, default_value = "shiftnn-cloud")]
    pub client_id: String,
    /// Shared-subscription group.
    #[arg(long, default_value = "workers")]
    pub group: String,
    /// Train a device after this many new samples.
    #[arg(long, default_value_t = 32)]
    pub train_every: usize,
    /// SGD steps per round.
    #[arg(long, default_value_t = 20)]
    pub steps: usize,
    /// Learning rate.
    #[arg(long)]
    pub lr: Option<f32>,
    /// Minibatch size.
    #[arg(long)]
    pub batch: Option<usize>,
    /// Replay buffer capacity per device.
    #[arg(long)]
    pub replay: Option<usize>,
    /// Do not re-estimate BatchNorm statistics from replayed samples (then
    /// only SGD, with `--lr`, changes the parameters).
    #[arg(long)]
    pub no_update_stats: bool,
    /// Send re-estimated statistics as mean/var tensors instead of folding
    /// them into gamma/beta (the patch then doubles in size).
    #[arg(long)]
    pub no_fold_stats: bool,
    /// Append `device boot seq` per received sample to this file.
    #[arg(long, value_name = "FILE")]
    pub received_log: Option<PathBuf>,
    /// Write the worker's counters as JSON to this file every second.
    #[arg(long, value_name = "FILE")]
    pub stats: Option<PathBuf>,
}

/// Run `shiftnn cloud` (until killed).
pub fn cloud_main(a: CloudArgs) -> Result<()> {
    let (host, port) = parse_broker(&a.broker)?;
    let student = Arc::new(common::open_model(&a.student)?);
    let key = read_key(&a.key)?;
    let mut cfg = WorkerConfig::new(
        host,
        port,
        a.user,
        a.password,
        a.client_id,
        a.fleet,
        a.group,
    );
    cfg.train_every = a.train_every;
    cfg.steps = a.steps;
    let mut lc = LearnerConfig::default();
    if let Some(v) = a.lr {
        lc.lr = v;
    }
    if let Some(v) = a.batch {
        lc.batch = v;
    }
    if let Some(v) = a.replay {
        lc.replay_capacity = v;
    }
    lc.update_stats = !a.no_update_stats;
    lc.fold_stats = !a.no_fold_stats;
    // With SGD on, a fixed teacher run on shifted inputs is about as wrong
    // as the student and drags it down; the adaptive one re-estimates its
    // statistics from the uploads (cloud/src/teacher.rs).
    let teacher = if lc.lr > 0.0 {
        adaptive_teacher(&a.teacher, &lc)?
    } else {
        onnx_teacher(&a.teacher)?
    };
    cfg.learner = lc;
    cfg.received_log = a.received_log;
    let w = Worker::start(cfg, student, teacher, key)?;
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let s = w.stats();
        if let Some(p) = &a.stats {
            let v = json!({
                "received": s.received, "duplicates": s.duplicates, "malformed": s.malformed,
                "wrong_model": s.wrong_model, "bad_patches": s.bad_patches,
                "learner_errors": s.learner_errors, "connects": s.connects,
                "bytes_published": s.bytes_published, "last_patch_bytes": s.last_patch_bytes,
                "devices": s.devices.iter().map(|(d, x)| (d.clone(), json!({
                    "received": x.received, "trainings": x.trainings, "published": x.published,
                    "adopted": x.adopted, "version": x.version, "last_loss": x.last_loss,
                }))).collect::<serde_json::Map<_, _>>(),
            });
            let tmp = p.with_extension("tmp");
            if std::fs::write(&tmp, v.to_string()).is_ok() {
                let _ = std::fs::rename(&tmp, p);
            }
        }
        if !w.is_running() {
            bail!("the worker thread ended: {:?}", s.last_error);
        }
    }
}

// ---------------------------------------------------------------- device

/// Arguments of the hidden `shiftnn adapt-device` (one demo device).
#[derive(clap::Args, Debug)]
pub struct DeviceArgs {
    /// Broker address.
    #[arg(long, value_name = "HOST:PORT")]
    pub broker: String,
    /// Fleet name.
    #[arg(long)]
    pub fleet: String,
    /// Device name (also its broker username).
    #[arg(long)]
    pub device: String,
    /// Broker password.
    #[arg(long, env = "SHIFTNN_MQTT_PASSWORD", hide_env_values = true)]
    pub password: String,
    /// The .shift model.
    #[arg(long)]
    pub model: PathBuf,
    /// Labelled data (.npz with x, y).
    #[arg(long)]
    pub data: PathBuf,
    /// Corruption applied to the stream.
    #[arg(long)]
    pub corruption: String,
    /// First image of the stream.
    #[arg(long, default_value_t = 0)]
    pub start: usize,
    /// Images in the stream.
    #[arg(long, default_value_t = 2000)]
    pub n: usize,
    /// Images per second.
    #[arg(long, default_value_t = 50.0)]
    pub rate: f64,
    /// The cloud's ed25519 public key, hex.
    #[arg(long)]
    pub pubkey: String,
    /// Spool directory of the upload queue.
    #[arg(long)]
    pub spool: PathBuf,
    /// Upload queue capacity.
    #[arg(long, default_value_t = 256)]
    pub queue: usize,
    /// Redundancy margin of the selector (|cos| at or above is redundant).
    #[arg(long, default_value_t = 0.05)]
    pub redundancy: f32,
    /// Initial E_max of the selector (units of ln C).
    #[arg(long, default_value_t = 0.4)]
    pub e_max: f32,
    /// Dynamic E_max = this factor x the running mean entropy.
    #[arg(long, default_value_t = 1.0)]
    pub dynamic_scale: f32,
    /// Seconds to wait after the stream for the queue to drain.
    #[arg(long, default_value_t = 30.0)]
    pub drain: f64,
    /// Where to write the JSON report.
    #[arg(long)]
    pub out: PathBuf,
}

/// Scale of the int8 quantization the model applies to its input, if any.
fn input_scale(m: &Model) -> Option<f32> {
    let g = m.graph();
    let inp = *g.inputs.first()?;
    g.nodes
        .iter()
        .find(|n| matches!(n.op, Op::Quantize) && n.inputs.first() == Some(&inp))
        .map(|n| g.values[n.output].scale)
        .filter(|s| *s > 0.0)
}

/// Run one demo device.
pub fn device_main(a: DeviceArgs) -> Result<()> {
    let (host, port) = parse_broker(&a.broker)?;
    let model = Arc::new(common::open_model(&a.model)?);
    let m: &Model = &model;
    let per = m.input_len(0);
    let classes = m.output_len(0);
    let mut npz = npy::Npz::open(&a.data)?;
    let x = npz.f32("x")?;
    let y = npz.i64("y")?;
    let total = y.data.len();
    if total == 0 || x.data.len() != total * per {
        bail!(
            "{}: x does not hold {total} inputs of {per} values",
            a.data.display()
        );
    }
    let xs = stream(&x, per, a.start, a.n, &a.corruption)?;
    let labels: Vec<i64> = (0..a.n).map(|i| y.data[(a.start + i) % total]).collect();

    let pk = unhex(&a.pubkey)
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .ok_or_else(|| anyhow!("--pubkey: expected 64 hex digits"))?;
    let vk = VerifyingKey::from_bytes(&pk).map_err(|e| anyhow!("--pubkey: {e}"))?;
    let params = Arc::new(SharedParams::new(m).map_err(common::rt)?);
    params.trust(vk, 0);
    let queue = Arc::new(UploadQueue::with_spool(a.queue, &a.spool, false)?);
    let mut lc = LinkConfig::new(host, port, &a.fleet, &a.device, &a.device, &a.password);
    lc.backoff_max = Duration::from_secs(2);
    let link = EdgeLink::start(lc, queue.clone(), model.clone(), params.clone());
    let mut session = Session::new(m).map_err(common::rt)?;
    session.set_shared(params.clone()).map_err(common::rt)?;
    let mut sel = Selector::new(
        SelectConfig {
            e_max: a.e_max,
            redundancy: a.redundancy,
            dynamic_scale: a.dynamic_scale,
            ..SelectConfig::default()
        },
        classes,
    );
    let boot = u64::from_le_bytes(random_bytes::<8>()?);
    let scale = input_scale(m);
    let shape: Vec<u32> = m.graph().values[m.graph().inputs[0]]
        .shape
        .iter()
        .map(|&d| d as u32)
        .collect();

    let mut logits = vec![0f32; classes];
    let mut correct = Vec::with_capacity(a.n);
    let (mut lat_normal, mut lat_apply) = (Vec::new(), Vec::new());
    let mut versions = Vec::with_capacity(a.n);
    let t0 = Instant::now();
    for i in 0..a.n {
        let due = t0 + Duration::from_secs_f64(i as f64 / a.rate.max(1e-3));
        if let Some(d) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(d);
        }
        let xi = &xs[i * per..(i + 1) * per];
        let (applies, applying) = (link.applies_started(), link.applying());
        let t = Instant::now();
        session.run(&[xi], &mut [&mut logits]).map_err(common::rt)?;
        let dt = t.elapsed().as_secs_f64() * 1e3;
        if applying || link.applying() || link.applies_started() != applies {
            lat_apply.push(dt);
        } else {
            lat_normal.push(dt);
        }
        correct.push(argmax(&logits) as i64 == labels[i]);
        versions.push(params.patch_stats().version);
        let mut p = logits.clone();
        softmax(&mut p);
        let v = sel.observe(&p);
        if v.decision == shiftnn_runtime::adapt::Decision::Selected {
            let input = match scale {
                Some(s) => {
                    let mut q = vec![0i8; per];
                    shiftnn_runtime::kernels::scalar::quantize_i8(xi, 1.0 / s, &mut q);
                    SampleInput::I8 { scale: s, data: q }
                }
                None => SampleInput::F32(xi.to_vec()),
            };
            let seq = queue.stats().pushed;
            let msg = SampleMsg {
                fingerprint: m.fingerprint(),
                boot,
                // The queue numbers samples itself; the message carries the
                // same number (pushes come only from this thread).
                seq,
                entropy: entropy(&p),
                probs: p,
                shape: shape.clone(),
                input,
            };
            let got = queue.push(encode_sample(&msg));
            debug_assert_eq!(got, seq);
        }
    }
    let stream_secs = t0.elapsed().as_secs_f64();
    let drain_until = Instant::now() + Duration::from_secs_f64(a.drain);
    while !queue.is_empty() && Instant::now() < drain_until {
        std::thread::sleep(Duration::from_millis(50));
    }
    // Accuracy of the final parameters over the same stream.
    let mut final_correct = 0usize;
    for (i, l) in labels.iter().enumerate() {
        session
            .run(&[&xs[i * per..(i + 1) * per]], &mut [&mut logits])
            .map_err(common::rt)?;
        final_correct += (argmax(&logits) as i64 == *l) as usize;
    }
    let ls = link.stats();
    let qs = queue.stats();
    let ss = sel.stats();
    let ps = params.patch_stats();
    link.stop();
    let n = a.n.max(1) as f64;
    let half = a.n / 2;
    let acc = |r: &[bool]| r.iter().filter(|&&c| c).count() as f64 / r.len().max(1) as f64;
    let apply_ms: Vec<f64> = ls.apply_micros.iter().map(|&u| u as f64 / 1e3).collect();
    let v = json!({
        "device": a.device, "corruption": a.corruption, "n": a.n, "boot": boot.to_string(),
        "accuracy_adapt": acc(&correct),
        "accuracy_adapt_second_half": acc(&correct[half..]),
        "accuracy_adapt_final": final_correct as f64 / n,
        "stream_seconds": stream_secs,
        "selected": ss.selected, "unreliable": ss.unreliable, "low_informative": ss.low_informative,
        "redundant": ss.redundant,
        "upload_fraction": ss.selected as f64 / n,
        "queue": {"pushed": qs.pushed, "acked": qs.acked, "dropped": qs.dropped, "left": qs.len,
                  "recovered": qs.recovered, "spool_errors": qs.spool_errors},
        "link": {"connects": ls.connects, "failures": ls.failures, "published": ls.published,
                 "bytes_up": ls.bytes_up, "bytes_down": ls.bytes_down,
                 "patches_received": ls.patches_received, "patches_applied": ls.patches_applied,
                 "patches_rejected": ls.patches_rejected, "patches_duplicate": ls.patches_duplicate,
                 "last_patch_bytes": ls.last_patch_bytes, "last_patch_error": ls.last_patch_error},
        "patch_version": ps.version,
        "first_patch_at": versions.iter().position(|&v| v > 0),
        "apply_ms": apply_ms,
        "latency_ms": {"n": lat_normal.len(), "p50": percentile(&lat_normal, 0.5), "p99": percentile(&lat_normal, 0.99)},
        "latency_during_apply_ms": {"n": lat_apply.len(), "p50": percentile(&lat_apply, 0.5), "p99": percentile(&lat_apply, 0.99)},
        "latencies_normal": lat_normal, "latencies_apply": lat_apply,
    });
    std::fs::write(&a.out, v.to_string())
        .with_context(|| format!("writing {}", a.out.display()))?;
    Ok(())
}

// ---------------------------------------------------------------- demo

/// Arguments of `shiftnn adapt-demo`.
#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Print the results as JSON.
    #[arg(long)]
    pub json: bool,
    /// Images streamed by each device.
    #[arg(long, default_value_t = 2000)]
    pub stream: usize,
    /// Images per second per device.
    #[arg(long, default_value_t = 40.0)]
    pub rate: f64,
    /// The FP32 ONNX model: the cloud's teacher.
    #[arg(long, default_value = "examples/fmnist/fmnist_fp32.onnx")]
    pub onnx: PathBuf,
    /// The ONNX model the devices run, converted to int8 at `--bits`: by
    /// default the committed 3-bit DenseShift model (lossless at 3 bits).
    /// Offline (converter/examples/cema_offline.rs, 2000-image streams,
    /// statistics only) it adapts better than the 4-bit PTQ of the FP32
    /// model that the demo used before: recovered share of the lost
    /// accuracy 51/64/57/55 % against 57/48/51/59 % (Gaussian noise / blur
    /// / contrast / impulse noise); live, 49/59/53/58 % against
    /// 56/42/50/58 %.
    #[arg(long, default_value = "examples/fmnist/fmnist_denseshift_b3.onnx")]
    pub device_onnx: PathBuf,
    /// Test data (.npz with x, y); written by python/fmnist_data.py.
    #[arg(long, default_value = "examples/fmnist/data")]
    pub data: PathBuf,
    /// Working directory (models, broker files, logs, reports).
    #[arg(long, default_value = "out/adapt-demo")]
    pub out: PathBuf,
    /// Bits of the device model's shift layers.
    #[arg(long, default_value_t = 3)]
    pub bits: u32,
    /// Upload queue capacity per device.
    #[arg(long, default_value_t = 256)]
    pub queue: usize,
    /// Selector redundancy margin on |cos(p, m)| (1 disables the rule).
    #[arg(long, default_value_t = 0.95)]
    pub redundancy: f32,
    /// Selector initial E_max.
    #[arg(long, default_value_t = 0.4)]
    pub e_max: f32,
    /// Selector: dynamic E_max = this factor x the running mean entropy
    /// (CEMA: 1; lower uploads fewer samples).
    #[arg(long, default_value_t = 0.8)]
    pub dynamic_scale: f32,
    /// Worker: train after this many new samples of a device.
    #[arg(long, default_value_t = 16)]
    pub train_every: usize,
    /// Worker: SGD steps per round.
    #[arg(long, default_value_t = 5)]
    pub steps: usize,
    /// Worker learning rate (default: the learner's).
    #[arg(long)]
    pub lr: Option<f32>,
    /// Workers do not re-estimate BatchNorm statistics (they then learn
    /// only by SGD, with `--lr`).
    #[arg(long)]
    pub no_update_stats: bool,
    /// Do not kill and restart the broker and a worker mid-stream.
    #[arg(long)]
    pub no_faults: bool,
}

struct Procs(Vec<(String, Child)>);
impl Drop for Procs {
    fn drop(&mut self) {
        for (_, c) in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn say(json: bool, m: &str) {
    if !json {
        eprintln!("== {m}");
    } else {
        eprintln!("adapt-demo: {m}");
    }
}

fn ensure_data(data: &Path, json: bool) -> Result<()> {
    if data.join("test.npz").is_file() && data.join("calib.npy").is_file() {
        return Ok(());
    }
    say(
        json,
        "writing the Fashion-MNIST test split (python/fmnist_data.py)",
    );
    let st = Command::new("/usr/bin/python3")
        .arg("python/fmnist_data.py")
        .arg("--out")
        .arg(data)
        .status()
        .context("running /usr/bin/python3")?;
    if !st.success() {
        bail!(
            "python/fmnist_data.py failed; install the data first: apt-get install -y dataset-fashion-mnist python3-numpy"
        );
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn spawn_worker(
    exe: &Path,
    b: &Broker,
    a: &DemoArgs,
    dir: &Path,
    shift: &Path,
    id: &str,
    cloud_pw: &str,
) -> Result<Child> {
    let mut c = Command::new(exe);
    c.arg("cloud")
        .arg("--broker")
        .arg(format!("{}:{}", b.host(), b.port()))
        .args(["--fleet", "demo", "--user", "cloud", "--client-id", id])
        .arg("--teacher")
        .arg(&a.onnx)
        .arg("--student")
        .arg(shift)
        .arg("--key")
        .arg(dir.join("cloud.key"))
        .arg("--train-every")
        .arg(a.train_every.to_string())
        .arg("--steps")
        .arg(a.steps.to_string())
        .arg("--received-log")
        .arg(dir.join(format!("received-{id}.log")))
        .arg("--stats")
        .arg(dir.join(format!("stats-{id}.json")))
        .env("SHIFTNN_MQTT_PASSWORD", cloud_pw)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join(format!("{id}.log")))?);
    if let Some(lr) = a.lr {
        c.arg("--lr").arg(lr.to_string());
    }
    if a.no_update_stats {
        c.arg("--no-update-stats");
    }
    c.spawn().context("starting a cloud worker")
}

/// Top-1 accuracy of `m` on `n` inputs.
fn accuracy(m: &Model, xs: &[f32], labels: &[i64]) -> Result<f64> {
    let n = labels.len();
    let out = common::run_batch(m, xs, n, 1, &indicatif::ProgressBar::hidden())?;
    let k = m.output_len(0);
    let c = out
        .chunks_exact(k)
        .zip(labels)
        .filter(|(o, &l)| argmax(o) as i64 == l)
        .count();
    Ok(c as f64 / n.max(1) as f64)
}

/// Run `shiftnn adapt-demo`.
pub fn demo_main(a: DemoArgs) -> Result<()> {
    let exe = std::env::current_exe().context("locating the shiftnn binary")?;
    let dir = a.out.clone();
    std::fs::create_dir_all(&dir)?;
    let dir = dir.canonicalize()?;
    ensure_data(&a.data, a.json)?;
    let stem = a
        .device_onnx
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("device");
    let shift = dir.join(format!("{stem}_b{}_int8.shift", a.bits));
    say(
        a.json,
        &format!(
            "converting {} to {}",
            a.device_onnx.display(),
            shift.display()
        ),
    );
    let st = Command::new(&exe)
        .arg("convert")
        .arg(&a.device_onnx)
        .arg("-o")
        .arg(&shift)
        .args(["--bits", &a.bits.to_string(), "--mode", "int8", "--calib"])
        .arg(a.data.join("calib.npy"))
        .stdout(Stdio::null())
        .status()?;
    if !st.success() {
        bail!("shiftnn convert failed");
    }
    let model = common::open_model(&shift)?;
    let per = model.input_len(0);
    let mut npz = npy::Npz::open(a.data.join("test.npz"))?;
    let x = npz.f32("x")?;
    let y = npz.i64("y")?;
    let total = y.data.len();

    // Offline: the same streams without adaptation, and clean.
    let mut offline = Vec::new();
    for (k, c) in CORRUPTIONS.iter().enumerate() {
        let start = (k * a.stream) % total;
        let labels: Vec<i64> = (0..a.stream).map(|i| y.data[(start + i) % total]).collect();
        let clean = accuracy(&model, &stream(&x, per, start, a.stream, "clean")?, &labels)?;
        let shifted = accuracy(&model, &stream(&x, per, start, a.stream, c)?, &labels)?;
        offline.push((start, clean, shifted));
    }

    // Broker, key, users.
    let devices: Vec<String> = (0..CORRUPTIONS.len()).map(|k| format!("dev{k}")).collect();
    let pw = |u: &str| -> Result<String> { Ok(format!("{u}-{}", hex(&random_bytes::<8>()?))) };
    let cloud_pw = pw("cloud")?;
    let dev_pw: Vec<String> = devices.iter().map(|d| pw(d)).collect::<Result<_>>()?;
    let users = BrokerUsers {
        fleet: "demo".into(),
        devices: devices
            .iter()
            .cloned()
            .zip(dev_pw.iter().cloned())
            .collect(),
        cloud_user: "cloud".into(),
        cloud_password: cloud_pw.clone(),
    };
    let bdir = dir.join("broker");
    let _ = std::fs::remove_dir_all(&bdir);
    let _ = std::fs::remove_dir_all(dir.join("spool"));
    for f in std::fs::read_dir(&dir)? {
        let p = f?.path();
        let name = p
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name.starts_with("received-")
            || name.starts_with("stats-")
            || name.ends_with(".report.json")
        {
            let _ = std::fs::remove_file(&p);
        }
    }
    let mut broker = Broker::start(&bdir, &users)?;
    say(a.json, &format!("mosquitto on 127.0.0.1:{}", broker.port()));
    let key = SigningKey::from_bytes(&random_bytes::<32>()?);
    std::fs::write(dir.join("cloud.key"), hex(&key.to_bytes()))?;
    let pubkey = hex(key.verifying_key().as_bytes());

    let mut procs = Procs(Vec::new());
    for id in ["worker0", "worker1"] {
        let c = spawn_worker(&exe, &broker, &a, &dir, &shift, id, &cloud_pw)?;
        procs.0.push((id.into(), c));
    }
    let secs = a.stream as f64 / a.rate;
    say(
        a.json,
        &format!(
            "2 workers, 4 devices, {} images each at {}/s (~{secs:.0} s)",
            a.stream, a.rate
        ),
    );
    let mut dev_children = Vec::new();
    for (k, d) in devices.iter().enumerate() {
        let c = Command::new(&exe)
            .arg("adapt-device")
            .arg("--broker")
            .arg(format!("{}:{}", broker.host(), broker.port()))
            .args([
                "--fleet",
                "demo",
                "--device",
                d,
                "--corruption",
                CORRUPTIONS[k],
            ])
            .arg("--model")
            .arg(&shift)
            .arg("--data")
            .arg(a.data.join("test.npz"))
            .arg("--start")
            .arg(offline[k].0.to_string())
            .arg("--n")
            .arg(a.stream.to_string())
            .arg("--rate")
            .arg(a.rate.to_string())
            .arg("--pubkey")
            .arg(&pubkey)
            .arg("--spool")
            .arg(dir.join("spool").join(d))
            .arg("--queue")
            .arg(a.queue.to_string())
            .arg("--redundancy")
            .arg(a.redundancy.to_string())
            .arg("--e-max")
            .arg(a.e_max.to_string())
            .arg("--dynamic-scale")
            .arg(a.dynamic_scale.to_string())
            .arg("--out")
            .arg(dir.join(format!("{d}.report.json")))
            .env("SHIFTNN_MQTT_PASSWORD", &dev_pw[k])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join(format!("{d}.log")))?)
            .spawn()
            .context("starting a device")?;
        dev_children.push(c);
    }

    // Faults in the middle of the stream.
    let t0 = Instant::now();
    let mut faults = Vec::new();
    if !a.no_faults {
        let at = |f: f64| t0 + Duration::from_secs_f64(secs * f);
        sleep_until(at(0.35));
        say(a.json, "stopping the broker");
        broker.stop()?;
        std::thread::sleep(Duration::from_secs(2));
        broker.restart()?;
        say(a.json, "broker restarted");
        faults.push(json!({"broker_restart_at_s": t0.elapsed().as_secs_f64()}));
        sleep_until(at(0.55));
        say(a.json, "killing worker1 (SIGKILL)");
        if let Some((_, c)) = procs.0.iter_mut().find(|(n, _)| n == "worker1") {
            let _ = c.kill();
            let _ = c.wait();
        }
        std::thread::sleep(Duration::from_secs(2));
        let c = spawn_worker(&exe, &broker, &a, &dir, &shift, "worker1", &cloud_pw)?;
        if let Some(p) = procs.0.iter_mut().find(|(n, _)| n == "worker1") {
            p.1 = c;
        }
        say(a.json, "worker1 restarted");
        faults.push(json!({"worker_restart_at_s": t0.elapsed().as_secs_f64()}));
    }
    for (k, mut c) in dev_children.into_iter().enumerate() {
        let st = c.wait()?;
        if !st.success() {
            bail!(
                "device {k} failed ({st}); see {}",
                dir.join(format!("dev{k}.log")).display()
            );
        }
    }
    // The workers may lag behind the devices (teacher and training cost):
    // wait until they have received what the devices' queues delivered, or
    // until they stop making progress.
    let expected: u64 = devices
        .iter()
        .filter_map(|d| {
            let t = std::fs::read_to_string(dir.join(format!("{d}.report.json"))).ok()?;
            let r: Value = serde_json::from_str(&t).ok()?;
            Some(r["queue"]["pushed"].as_u64()? - r["queue"]["dropped"].as_u64()?)
        })
        .sum();
    // Distinct samples: a worker killed before acknowledging logs a sample
    // that the broker then delivers again.
    let count = || -> u64 {
        let mut seen = HashSet::new();
        for id in ["worker0", "worker1"] {
            let t =
                std::fs::read_to_string(dir.join(format!("received-{id}.log"))).unwrap_or_default();
            seen.extend(t.lines().map(str::to_owned));
        }
        seen.len() as u64
    };
    say(
        a.json,
        &format!("waiting for the workers to catch up ({expected} uploads)"),
    );
    let (mut last, mut since) = (count(), Instant::now());
    while last < expected && since.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_secs(1));
        let c = count();
        if c > last {
            (last, since) = (c, Instant::now());
        }
    }
    // One more second for the last patches to reach the devices' logs.
    std::thread::sleep(Duration::from_secs(1));
    drop(procs);
    broker.stop()?;
    say(
        a.json,
        "measuring inference latency with and without concurrent applies",
    );
    let probe = apply_probe(&model, &key, &x.data[..per * 64], per)?;

    // Reports.
    let mut received: BTreeMap<String, HashSet<(String, u64)>> = BTreeMap::new();
    for id in ["worker0", "worker1"] {
        let t = std::fs::read_to_string(dir.join(format!("received-{id}.log"))).unwrap_or_default();
        for line in t.lines() {
            let f: Vec<&str> = line.split(' ').collect();
            if let [d, boot, seq] = f[..] {
                if let Ok(s) = seq.parse() {
                    received
                        .entry(d.into())
                        .or_default()
                        .insert((boot.into(), s));
                }
            }
        }
    }
    let affine_bytes: usize = model
        .graph()
        .nodes
        .iter()
        .filter_map(|n| {
            n.op.norm().map(|_| {
                2 * 4
                    * model.graph().values[n.output]
                        .shape
                        .get(1)
                        .copied()
                        .unwrap_or(0)
            })
        })
        .sum();
    let mut per_c = serde_json::Map::new();
    let (mut tot_n, mut sums) = (0usize, [0f64; 5]);
    let (mut lat_n, mut lat_a, mut apply_ms) = (Vec::new(), Vec::new(), Vec::new());
    let (mut selected, mut lost_total, mut dropped_total, mut patch_bytes) =
        (0u64, 0i64, 0u64, 0usize);
    for (k, d) in devices.iter().enumerate() {
        let r: Value = serde_json::from_str(
            &std::fs::read_to_string(dir.join(format!("{d}.report.json")))
                .with_context(|| format!("report of {d}"))?,
        )?;
        let boot = r["boot"].as_str().unwrap_or("").to_string();
        let pushed = r["queue"]["pushed"].as_u64().unwrap_or(0);
        let dropped = r["queue"]["dropped"].as_u64().unwrap_or(0);
        let got = received
            .get(d)
            .map_or(0, |s| s.iter().filter(|(b, _)| *b == boot).count()) as i64;
        let lost = (pushed - dropped) as i64 - got;
        lost_total += lost;
        dropped_total += dropped;
        selected += r["selected"].as_u64().unwrap_or(0);
        patch_bytes = patch_bytes.max(r["link"]["last_patch_bytes"].as_u64().unwrap_or(0) as usize);
        let f = |v: &Value| -> Vec<f64> {
            v.as_array()
                .map(|a| a.iter().filter_map(|x| x.as_f64()).collect())
                .unwrap_or_default()
        };
        lat_n.extend(f(&r["latencies_normal"]));
        lat_a.extend(f(&r["latencies_apply"]));
        apply_ms.extend(f(&r["apply_ms"]));
        let (_, clean, shifted) = offline[k];
        let adapt = r["accuracy_adapt"].as_f64().unwrap_or(f64::NAN);
        let fin = r["accuracy_adapt_final"].as_f64().unwrap_or(f64::NAN);
        let second = r["accuracy_adapt_second_half"].as_f64().unwrap_or(f64::NAN);
        let rec = |v: f64| {
            if clean > shifted {
                (v - shifted) / (clean - shifted)
            } else {
                f64::NAN
            }
        };
        let n = a.stream;
        tot_n += n;
        for (s, v) in sums.iter_mut().zip([clean, shifted, adapt, fin, second]) {
            *s += v * n as f64;
        }
        per_c.insert(
            CORRUPTIONS[k].into(),
            json!({
                "device": d, "n": n,
                "accuracy_clean": clean, "accuracy_no_adapt": shifted, "accuracy_adapt": adapt,
                "accuracy_adapt_second_half": second, "accuracy_adapt_final": fin,
                "recovered_fraction": rec(adapt), "recovered_fraction_final": rec(fin),
                "upload_fraction": r["upload_fraction"], "bytes_up": r["link"]["bytes_up"],
                "bytes_down": r["link"]["bytes_down"], "patches_applied": r["link"]["patches_applied"],
                "patches_rejected": r["link"]["patches_rejected"], "patch_version": r["patch_version"],
                "first_patch_at_sample": r["first_patch_at"],
                "queue_pushed": pushed, "queue_dropped": dropped, "received_by_cloud": got,
                "lost_uploads": lost,
            }),
        );
    }
    let tn = tot_n.max(1) as f64;
    let p99n = percentile(&lat_n, 0.99);
    let p99a = percentile(&lat_a, 0.99);
    let out = json!({
        "accuracy_clean": sums[0] / tn,
        "accuracy_no_adapt": sums[1] / tn,
        "accuracy_adapt": sums[2] / tn,
        "accuracy_adapt_final": sums[3] / tn,
        "accuracy_adapt_second_half": sums[4] / tn,
        "per_corruption": per_c,
        "upload_fraction": selected as f64 / tn,
        "patch_bytes": patch_bytes,
        "affine_bytes": affine_bytes,
        "lost_uploads": lost_total,
        "dropped_by_queue_policy": dropped_total,
        "patch_apply_ms": {"n": apply_ms.len(), "p50": percentile(&apply_ms, 0.5), "max": apply_ms.iter().cloned().fold(f64::NAN, f64::max)},
        "inference_ms": {"n": lat_n.len(), "p50": percentile(&lat_n, 0.5), "p99": p99n},
        "inference_during_apply_ms": {"n": lat_a.len(), "p50": percentile(&lat_a, 0.5), "p99": p99a},
        "faults": faults,
        "apply_probe": probe,
        "stream_per_device": a.stream, "rate": a.rate,
        "device_model": a.device_onnx.display().to_string(), "bits": a.bits,
        "teacher": a.onnx.display().to_string(),
    });
    std::fs::write(dir.join("result.json"), serde_json::to_string_pretty(&out)?)?;
    if a.json {
        outln!("{out}");
        return Ok(());
    }
    print_table(&out);
    Ok(())
}

/// Inference latency of one session while another thread applies signed
/// patches, against the same session with no apply, in alternating blocks
/// (so that drift in machine load hits both alike).
///
/// The devices' own split (`inference_during_apply_ms`) rarely catches an
/// apply: one takes ~0.1 ms every few seconds. This probe runs after the
/// devices and workers have stopped, in one process, on the same
/// [`SharedParams`] path a device uses: in the apply blocks a second thread
/// applies a patch every `GAP` (as a device's link thread does when
/// patches arrive, only far more often), and an inference counts as
/// "during an apply" if an apply was running when it started or ended or
/// completed while it ran (so it includes the first run on freshly swapped
/// parameters). A third kind of block is the control: the second thread
/// spins for as long as an apply takes, on the same schedule, touching no
/// shared state, which measures what any work on another core costs this
/// machine (on the 2-vCPU VM this was developed on, ~30 % at the median).
pub fn apply_probe(model: &Model, key: &SigningKey, xs: &[f32], per: usize) -> Result<Value> {
    use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
    const ROUNDS: usize = 12;
    const RUNS: usize = 400;
    const GAP: Duration = Duration::from_micros(1500);
    const IDLE: u8 = 0;
    const APPLY: u8 = 1;
    const SPIN: u8 = 2;
    let base = shiftnn_runtime::Prepared::new(model).map_err(common::rt)?;
    let layers = |v: u64| -> Vec<PatchLayer> {
        let f = 1.0 + 0.01 * (v % 7) as f32;
        base.norms
            .iter()
            .map(|(p, n)| PatchLayer {
                prefix: p.clone(),
                gamma: n.gamma.iter().map(|g| g * f).collect(),
                beta: n.beta.clone(),
                mean: None,
                var: None,
            })
            .collect()
    };
    // Signed ahead of time: signing is the cloud's cost, not the device's.
    let blobs: Vec<Vec<u8>> = (1..=(ROUNDS * RUNS) as u64)
        .map(|v| build_patch(model, v, &layers(v), key))
        .collect::<Result<_, _>>()
        .map_err(common::rt)?;
    let shared = Arc::new(SharedParams::new(model).map_err(common::rt)?);
    shared.trust(key.verifying_key(), 0);
    let mut session = Session::new(model).map_err(common::rt)?;
    session.set_shared(shared.clone()).map_err(common::rt)?;
    let mut out = vec![0f32; model.output_len(0)];
    let n_in = (xs.len() / per.max(1)).max(1);
    let (mut normal, mut during, mut control) = (Vec::new(), Vec::new(), Vec::new());
    let mut apply_ms = Vec::new();
    let mode = AtomicU8::new(IDLE);
    let stop = AtomicBool::new(false);
    let busy = AtomicBool::new(false);
    let events = AtomicU64::new(0);
    std::thread::scope(|sc| -> Result<()> {
        let worker = sc.spawn(|| {
            let mut ms: Vec<f64> = Vec::new();
            let mut next = blobs.iter();
            let mut spin = Duration::from_micros(100);
            while !stop.load(Ordering::Acquire) {
                std::thread::sleep(GAP);
                let m = mode.load(Ordering::Acquire);
                if m == IDLE {
                    continue;
                }
                busy.store(true, Ordering::Release);
                let t = Instant::now();
                if m == APPLY {
                    let Some(b) = next.next() else { break };
                    if shared.apply_patch(model, b).is_ok() {
                        ms.push(t.elapsed().as_secs_f64() * 1e3);
                        spin = Duration::from_secs_f64(percentile(&ms, 0.5) / 1e3);
                    }
                } else {
                    let mut x = 1u64;
                    while t.elapsed() < spin {
                        for _ in 0..64 {
                            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                        }
                    }
                    std::hint::black_box(x);
                }
                busy.store(false, Ordering::Release);
                events.fetch_add(1, Ordering::AcqRel);
            }
            ms
        });
        let mut run = |i: usize| -> Result<(f64, bool)> {
            let x = &xs[(i % n_in) * per..(i % n_in + 1) * per];
            let (e0, b0) = (events.load(Ordering::Acquire), busy.load(Ordering::Acquire));
            let t = Instant::now();
            session.run(&[x], &mut [&mut out]).map_err(common::rt)?;
            let dt = t.elapsed().as_secs_f64() * 1e3;
            let overlap =
                b0 || busy.load(Ordering::Acquire) || events.load(Ordering::Acquire) != e0;
            Ok((dt, overlap))
        };
        for i in 0..50 {
            run(i)?; // warm-up
        }
        for r in 0..ROUNDS {
            for (m, into) in [
                (IDLE, &mut normal),
                (APPLY, &mut during),
                (SPIN, &mut control),
            ] {
                mode.store(m, Ordering::Release);
                std::thread::sleep(GAP * 2);
                for i in 0..RUNS {
                    let (dt, overlap) = run(r * RUNS + i)?;
                    if m == IDLE || overlap {
                        into.push(dt);
                    }
                }
            }
        }
        mode.store(IDLE, Ordering::Release);
        stop.store(true, Ordering::Release);
        apply_ms = worker
            .join()
            .map_err(|_| anyhow!("apply thread panicked"))?;
        Ok(())
    })?;
    let p99 = |v: &[f64]| percentile(v, 0.99);
    let block = |v: &[f64]| json!({"n": v.len(), "p50": percentile(v, 0.5), "p99": p99(v)});
    Ok(json!({
        "normal": block(&normal),
        "during": block(&during),
        "control_spin": block(&control),
        "p99_ratio": p99(&during) / p99(&normal),
        "p99_ratio_vs_control": p99(&during) / p99(&control),
        "applies": apply_ms.len(),
        "apply_ms": {"p50": percentile(&apply_ms, 0.5), "p99": percentile(&apply_ms, 0.99)},
        "blocks": ROUNDS, "runs_per_block": RUNS, "gap_ms": GAP.as_secs_f64() * 1e3,
    }))
}

/// Arguments of `shiftnn adapt-probe`.
#[derive(clap::Args, Debug)]
pub struct ProbeArgs {
    /// The model.
    #[arg(long, value_name = "M.shift")]
    pub model: PathBuf,
    /// Inputs (.npz with x).
    #[arg(long, default_value = "examples/fmnist/data/test.npz")]
    pub data: PathBuf,
}

/// Run [`apply_probe`] alone, with a fresh key; prints its JSON.
pub fn probe_main(a: ProbeArgs) -> Result<()> {
    let model = common::open_model(&a.model)?;
    let per = model.input_len(0);
    let x = npy::Npz::open(&a.data)?.f32("x")?;
    if x.data.len() < per {
        bail!("{}: fewer values than one input", a.data.display());
    }
    let n = (x.data.len() / per).min(64);
    let key = SigningKey::from_bytes(&random_bytes::<32>()?);
    outln!("{}", apply_probe(&model, &key, &x.data[..n * per], per)?);
    Ok(())
}

fn sleep_until(t: Instant) {
    if let Some(d) = t.checked_duration_since(Instant::now()) {
        std::thread::sleep(d);
    }
}

fn print_table(o: &Value) {
    let pc = |v: &Value| format!("{:.2}", 100.0 * v.as_f64().unwrap_or(f64::NAN));
    let mut t = common::Table::new(&[
        ("corruption", false),
        ("clean %", true),
        ("no adapt %", true),
        ("adapt %", true),
        ("adapt 2nd half %", true),
        ("final params %", true),
        ("recovered", true),
        ("uploaded %", true),
        ("bytes up", true),
        ("bytes down", true),
        ("lost", true),
    ]);
    if let Some(m) = o["per_corruption"].as_object() {
        for (c, r) in m {
            t.row(vec![
                c.clone(),
                pc(&r["accuracy_clean"]),
                pc(&r["accuracy_no_adapt"]),
                pc(&r["accuracy_adapt"]),
                pc(&r["accuracy_adapt_second_half"]),
                pc(&r["accuracy_adapt_final"]),
                pc(&r["recovered_fraction"]),
                pc(&r["upload_fraction"]),
                r["bytes_up"].to_string(),
                r["bytes_down"].to_string(),
                r["lost_uploads"].to_string(),
            ]);
        }
    }
    t.row(vec![
        "all".into(),
        pc(&o["accuracy_clean"]),
        pc(&o["accuracy_no_adapt"]),
        pc(&o["accuracy_adapt"]),
        pc(&o["accuracy_adapt_second_half"]),
        pc(&o["accuracy_adapt_final"]),
        String::new(),
        pc(&o["upload_fraction"]),
        String::new(),
        String::new(),
        o["lost_uploads"].to_string(),
    ]);
    t.print();
    outln!();
    outln!(
        "patch: {} bytes (affine parameters: {} bytes); apply p50 {:.3} ms, max {:.3} ms over {} applies",
        o["patch_bytes"],
        o["affine_bytes"],
        o["patch_apply_ms"]["p50"].as_f64().unwrap_or(f64::NAN),
        o["patch_apply_ms"]["max"].as_f64().unwrap_or(f64::NAN),
        o["patch_apply_ms"]["n"]
    );
    outln!(
        "inference: p50 {:.3} ms, p99 {:.3} ms; during applies ({} runs): p50 {:.3} ms, p99 {:.3} ms",
        o["inference_ms"]["p50"].as_f64().unwrap_or(f64::NAN),
        o["inference_ms"]["p99"].as_f64().unwrap_or(f64::NAN),
        o["inference_during_apply_ms"]["n"],
        o["inference_during_apply_ms"]["p50"].as_f64().unwrap_or(f64::NAN),
        o["inference_during_apply_ms"]["p99"].as_f64().unwrap_or(f64::NAN),
    );
    let p = &o["apply_probe"];
    let f = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    outln!(
        "apply probe (one session; another thread applies a patch every {} ms): inference p99 \
         {:.3} ms overlapping an apply ({} runs, {} applies), {:.3} ms with no apply: {:.2}x; \
         {:.3} ms overlapping a spin of the same length (control): {:.2}x",
        p["gap_ms"],
        f(&p["during"]["p99"]),
        p["during"]["n"],
        p["applies"],
        f(&p["normal"]["p99"]),
        f(&p["p99_ratio"]),
        f(&p["control_spin"]["p99"]),
        f(&p["p99_ratio_vs_control"]),
    );
    outln!(
        "uploads lost beyond the drop-oldest policy: {} (dropped by the policy: {})",
        o["lost_uploads"],
        o["dropped_by_queue_policy"]
    );
}
