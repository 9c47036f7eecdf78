//! Offline CEMA experiment (issue 5, cloud learner): the Fashion-MNIST
//! int8 `.shift` model on corrupted test streams, adapted by
//! `shiftnn_cloud::Learner` from the samples `runtime::adapt::Selector`
//! uploads, with patches applied through `build_patch` +
//! `SharedParams::apply_patch` exactly as on a device.
//!
//! For each corruption, the stream is the test split in order (corrupted
//! per image). The device model predicts each sample *before* any update
//! that sample contributes to; every `--every` samples the learner trains
//! `--steps` SGD steps and a new signed patch is applied. Reported per
//! corruption: accuracy of the unadapted model on the stream, accuracy over
//! the stream as it arrives with adaptation, accuracy on the held-out
//! second half (adapting on the first half only, then frozen), the clean
//! accuracy, the fraction of the loss recovered and the upload fraction.
//!
//! ```text
//! cargo run --release -p shiftnn-converter --example cema_offline -- \
//!     MODEL.shift examples/fmnist/fmnist_fp32.onnx examples/fmnist/data/test.npz [--n 10000] ...
//! ```
//! Not a test: it takes minutes.
//!
//! Measured (4000-sample streams, 4-bit int8 model converted with
//! `shiftnn convert examples/fmnist/fmnist_fp32.onnx -o fm_int8.shift --bits 4
//! --mode int8 --calib examples/fmnist/data/calib.npy`; options
//! `--n 4000 --every 250 --redundancy 1.01 --dynamic-scale 0.7 --steps 0`,
//! learner defaults: statistics re-estimated from the 512 most recent
//! uploads, alpha 1, no SGD): recovered 55 / 60 / 51 / 62 % of the accuracy
//! lost to Gaussian noise / blur / contrast / impulse noise over the stream
//! as it arrives (57 / 63 / 55 / 68 % on the held-out second half),
//! uploading 28 / 27 / 24 / 33 % of samples. Adding SGD on gamma/beta
//! (`--steps 10 --lr 5e-5`) recovered less (13 / 49 / 24 / 22 %).

use anyhow::{anyhow, bail, Context, Result};
use shiftnn_cloud::{Learner, LearnerConfig, Teacher};
use shiftnn_converter::{ir, npy, onnx, reference};
use shiftnn_runtime::adapt::{
    build_patch, select::entropy, select::softmax, Decision, SelectConfig, Selector, SharedParams,
    SigningKey,
};
use shiftnn_runtime::{Model, Session};
use std::sync::Arc;

const MEAN: f32 = 0.2860;
const STD: f32 = 0.3530;

struct OnnxTeacher {
    graph: Arc<ir::Graph>,
    input: String,
}

impl Teacher for OnnxTeacher {
    fn logits(&mut self, input: &[f32]) -> Result<Vec<f32>> {
        let mut out = reference::run(&self.graph, &[(&self.input, input)])
            .map_err(|e| anyhow!("teacher: {e:?}"))?;
        if out.is_empty() {
            bail!("teacher has no output");
        }
        Ok(out.swap_remove(0))
    }
}

/// The same corruptions as `shiftnn adapt-demo` (converter/src/cli/adapt.rs).
fn corrupt(name: &str, x: &[f32], w: usize, s: u64) -> Vec<f32> {
    let raw: Vec<f32> = x.iter().map(|v| v * STD + MEAN).collect();
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
                let (u1, u2) = (next().max(1e-12), next());
                let n = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
                v + 0.4 * n as f32
            })
            .collect(),
        "blur" => {
            let h = raw.len() / w;
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
            let m = raw.iter().sum::<f32>() / raw.len() as f32;
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
        _ => raw,
    };
    out.into_iter()
        .map(|v| (v.clamp(0.0, 1.0) - MEAN) / STD)
        .collect()
}

fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .fold(
            (0, f32::NEG_INFINITY),
            |b, (i, &x)| if x > b.1 { (i, x) } else { b },
        )
        .0
}

struct Args {
    model: String,
    onnx: String,
    data: String,
    n: usize,
    every: usize,
    steps: usize,
    cfg: LearnerConfig,
    sel: SelectConfig,
    corruptions: Vec<String>,
}

fn parse() -> Result<Args> {
    let mut it = std::env::args().skip(1);
    let mut pos = Vec::new();
    let mut a = Args {
        model: String::new(),
        onnx: String::new(),
        data: String::new(),
        n: 10000,
        every: 250,
        steps: 20,
        cfg: LearnerConfig::default(),
        sel: SelectConfig::default(),
        corruptions: ["gaussian_noise", "blur", "contrast", "impulse_noise"]
            .map(String::from)
            .to_vec(),
    };
    while let Some(s) = it.next() {
        let mut val = || it.next().ok_or_else(|| anyhow!("{s} needs a value"));
        match s.as_str() {
            "--n" => a.n = val()?.parse()?,
            "--every" => a.every = val()?.parse()?,
            "--steps" => a.steps = val()?.parse()?,
            "--lr" => a.cfg.lr = val()?.parse()?,
            "--batch" => a.cfg.batch = val()?.parse()?,
            "--alpha" => a.cfg.stats_alpha = val()?.parse()?,
            "--no-stats" => a.cfg.update_stats = false,
            "--no-fake-quant" => a.cfg.fake_quant = false,
            "--dynamic-scale" => a.sel.dynamic_scale = val()?.parse()?,
            "--redundancy" => a.sel.redundancy = val()?.parse()?,
            "--corruptions" => a.corruptions = val()?.split(',').map(String::from).collect(),
            _ if s.starts_with("--") => bail!("unknown option {s}"),
            _ => pos.push(s),
        }
    }
    let [m, o, d]: [String; 3] = pos
        .try_into()
        .map_err(|_| anyhow!("usage: cema_offline MODEL.shift MODEL.onnx TEST.npz [options]"))?;
    (a.model, a.onnx, a.data) = (m, o, d);
    Ok(a)
}

fn main() -> Result<()> {
    let a = parse()?;
    let model = Model::open(&a.model).with_context(|| a.model.clone())?;
    let graph = Arc::new(onnx::load_file(&a.onnx).map_err(|e| anyhow!("{}: {e:?}", a.onnx))?);
    let input = graph.inputs[0].0.clone();
    let mut npz = npy::Npz::open(&a.data)?;
    let x = npz.f32("x")?;
    let y = npz.i64("y")?;
    let per = model.input_len(0);
    let classes = model.output_len(0);
    let n = a.n.min(y.data.len());
    let w = *x.shape.last().unwrap_or(&28);
    let key = SigningKey::from_bytes(&[7u8; 32]);
    println!(
        "model {} ({:?}), {n} samples per stream, train {} steps every {} samples, {:?}, {:?}",
        a.model,
        model.mode(),
        a.steps,
        a.every,
        a.cfg,
        a.sel
    );
    // `xs[i]` is test image `first + i`.
    let accuracy =
        |xs: &[Vec<f32>], first: usize, shared: Option<&Arc<SharedParams>>| -> Result<f64> {
            let mut s = Session::new(&model)?;
            if let Some(sh) = shared {
                s.set_shared(sh.clone())?;
            }
            let mut out = vec![0f32; classes];
            let mut ok = 0usize;
            for (i, xi) in xs.iter().enumerate() {
                s.run(&[xi], &mut [&mut out])?;
                ok += (argmax(&out) as i64 == y.data[first + i]) as usize;
            }
            Ok(ok as f64 / xs.len() as f64)
        };
    let clean: Vec<Vec<f32>> = (0..n)
        .map(|i| x.data[i * per..(i + 1) * per].to_vec())
        .collect();
    let acc_clean = accuracy(&clean, 0, None)?;
    println!("clean accuracy {:.2}%", 100.0 * acc_clean);
    println!(
        "| corruption | clean % | no adapt % | adapt (stream) % | recovered | held-out 2nd half: no adapt % | adapted on 1st half % | recovered | uploaded | train s |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for c in &a.corruptions {
        let xs: Vec<Vec<f32>> = clean
            .iter()
            .enumerate()
            .map(|(i, xi)| corrupt(c, xi, w, i as u64 + 1))
            .collect();
        let acc_none = accuracy(&xs, 0, None)?;
        let half = n / 2;
        let acc_none_2nd = accuracy(&xs[half..], half, None)?;
        // The stream, adapting as it arrives.
        let shared = Arc::new(SharedParams::new(&model)?);
        shared.trust(key.verifying_key(), 0);
        let mut sess = Session::new(&model)?;
        sess.set_shared(shared.clone())?;
        let teacher = OnnxTeacher {
            graph: graph.clone(),
            input: input.clone(),
        };
        let mut learner = Learner::new(&model, Box::new(teacher), a.cfg.clone())?;
        let mut sel = Selector::new(a.sel, classes);
        let mut out = vec![0f32; classes];
        let (mut ok, mut uploaded, mut version) = (0usize, 0usize, 0u64);
        let mut frozen: Option<Arc<SharedParams>> = None;
        let mut train_s = 0f64;
        for (i, xi) in xs.iter().enumerate() {
            sess.run(&[xi], &mut [&mut out])?;
            ok += (argmax(&out) as i64 == y.data[i]) as usize;
            let mut p = out.clone();
            softmax(&mut p);
            let v = sel.observe(&p);
            if v.decision == Decision::Selected {
                uploaded += 1;
                learner.push(xi.clone(), entropy(&p));
            }
            if (i + 1) % a.every == 0 && learner.replay_len() > 0 {
                let t0 = std::time::Instant::now();
                learner.train(a.steps);
                train_s += t0.elapsed().as_secs_f64();
                version += 1;
                let blob = build_patch(model.fingerprint(), version, &learner.layers(), &key)?;
                shared.apply_patch(&model, &blob)?;
            }
            if i + 1 == half {
                // Parameters learnt from the first half only.
                let f = Arc::new(SharedParams::new(&model)?);
                f.trust(key.verifying_key(), 0);
                let blob = build_patch(model.fingerprint(), 1, &learner.layers(), &key)?;
                f.apply_patch(&model, &blob)?;
                frozen = Some(f);
            }
        }
        let acc_adapt = ok as f64 / n as f64;
        let acc_frozen_2nd = accuracy(&xs[half..], half, frozen.as_ref())?;
        let rec = |a: f64, b: f64| (a - b) / (acc_clean - b);
        println!(
            "| {c} | {:.2} | {:.2} | {:.2} | {:.0}% | {:.2} | {:.2} | {:.0}% | {:.1}% | {:.1} |",
            100.0 * acc_clean,
            100.0 * acc_none,
            100.0 * acc_adapt,
            100.0 * rec(acc_adapt, acc_none),
            100.0 * acc_none_2nd,
            100.0 * acc_frozen_2nd,
            100.0 * rec(acc_frozen_2nd, acc_none_2nd),
            100.0 * uploaded as f64 / n as f64,
            train_s
        );
    }
    Ok(())
}
