//! The learner end to end on a small graph: training lowers the CEMA loss,
//! statistics re-estimation, parameter adoption, and patches the runtime
//! accepts.

mod common;
use common::*;
use shiftnn_cloud::student::Student;
use shiftnn_cloud::{Learner, LearnerConfig, Teacher};
use shiftnn_runtime::adapt::{build_patch, SharedParams, SigningKey};
use shiftnn_runtime::graph::{Act, DType, Mode, Op};
use shiftnn_runtime::{Model, Session};
use std::sync::Arc;

/// A teacher that prefers a class given by the sign pattern of the input.
struct RuleTeacher;
impl Teacher for RuleTeacher {
    fn logits(&mut self, x: &[f32]) -> anyhow::Result<Vec<f32>> {
        let s: f32 = x.iter().take(x.len() / 2).sum();
        let mut l = vec![0f32; 5];
        l[if s > 0.0 { 1 } else { 3 }] = 4.0;
        Ok(l)
    }
}

struct Failing;
impl Teacher for Failing {
    fn logits(&mut self, _: &[f32]) -> anyhow::Result<Vec<f32>> {
        anyhow::bail!("teacher down")
    }
}

fn cfg(stats: bool) -> LearnerConfig {
    LearnerConfig {
        lr: 0.05,
        batch: 8,
        update_stats: stats,
        replay_capacity: 64,
        stats_min_samples: 8,
        ..LearnerConfig::default()
    }
}

#[test]
fn training_lowers_the_loss_and_patches_apply() {
    let bytes = every_op_model(21);
    let model = Model::from_vec(&bytes).unwrap();
    let mut l = Learner::new(&model, Box::new(RuleTeacher), cfg(false)).unwrap();
    let mut r = Rng(4);
    for x in inputs(&mut r, 40, 72) {
        l.push(x, 0.2);
    }
    assert_eq!(l.replay_len(), 40);
    let before = l.layers();
    let first = l.train(5);
    let mut last = first.clone();
    for _ in 0..20 {
        last = l.train(5);
    }
    assert_eq!(first.steps, 5);
    assert!(
        last.loss < first.loss * 0.9,
        "loss {} -> {}",
        first.loss,
        last.loss
    );
    let after = l.layers();
    assert_eq!(after.len(), 4);
    assert_ne!(before, after);
    // Statistics were not touched, so none are sent.
    assert!(after.iter().all(|p| p.mean.is_none() && p.var.is_none()));
    // The device accepts the patch and then computes what the student does.
    let key = SigningKey::from_bytes(&[3; 32]);
    let blob = build_patch(&model, 1, &after, &key).unwrap();
    let shared = Arc::new(SharedParams::new(&model).unwrap());
    shared.trust(key.verifying_key(), 0);
    assert_eq!(shared.apply_patch(&model, &blob).unwrap(), 1);
    let mut s = Session::new(&model).unwrap();
    s.set_shared(shared).unwrap();
    let x = inputs(&mut r, 1, 72).remove(0);
    let mut out = vec![0f32; 5];
    s.run(&[&x], &mut [&mut out]).unwrap();
    let fwd = l.student().forward(&[&x]).unwrap();
    let lg = fwd.logits(0);
    let m = lg.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    let z: f32 = lg.iter().map(|v| (v - m).exp()).sum();
    for (a, b) in lg.iter().zip(&out) {
        assert!(((a - m).exp() / z - b).abs() < 1e-4);
    }
}

#[test]
fn set_layers_adopts_and_rejects() {
    let bytes = every_op_model(22);
    let model = Model::from_vec(&bytes).unwrap();
    let unfolded = LearnerConfig {
        fold_stats: false,
        ..cfg(true)
    };
    let mut a = Learner::new(&model, Box::new(RuleTeacher), unfolded.clone()).unwrap();
    let mut b = Learner::new(&model, Box::new(RuleTeacher), unfolded).unwrap();
    let mut r = Rng(8);
    for x in inputs(&mut r, 7, 72) {
        a.push(x, 0.3);
    }
    // Too few samples: statistics stay the file's.
    assert_eq!(a.train(1).stats_samples, 0);
    assert!(a.layers().iter().all(|p| p.mean.is_none()));
    for x in inputs(&mut r, 9, 72) {
        a.push(x, 0.3);
    }
    let st = a.train(3);
    assert_eq!(st.stats_samples, 16);
    let la = a.layers();
    assert!(la.iter().all(|p| p.mean.is_some() && p.var.is_some()));
    b.set_layers(&la).unwrap();
    assert_eq!(b.layers(), la);
    let mut bad = la.clone();
    bad[0].prefix = "nope".into();
    assert!(b.set_layers(&bad).is_err());
    let mut bad = la.clone();
    bad[1].gamma.pop();
    assert!(b.set_layers(&bad).is_err());
    let mut bad = la;
    bad[2].var.as_mut().unwrap()[0] = -1.0;
    assert!(b.set_layers(&bad).is_err());
}

#[test]
fn push_drops_bad_samples() {
    let bytes = every_op_model(23);
    let model = Model::from_vec(&bytes).unwrap();
    let mut l = Learner::new(&model, Box::new(RuleTeacher), cfg(false)).unwrap();
    l.push(vec![0.0; 71], 0.1);
    l.push(vec![f32::NAN; 72], 0.1);
    l.push(vec![0.0; 72], f32::NAN);
    assert_eq!((l.replay_len(), l.rejected()), (0, 3));
    assert_eq!(l.train(3).steps, 0);
    let mut f = Learner::new(&model, Box::new(Failing), cfg(false)).unwrap();
    f.push(vec![0.0; 72], 0.1);
    assert_eq!((f.replay_len(), f.rejected()), (0, 1));
    // The replay buffer is a bounded FIFO.
    for i in 0..100 {
        l.push(vec![i as f32 * 0.01; 72], 0.1);
    }
    assert_eq!(l.replay_len(), 64);
}

#[test]
fn statistics_are_re_estimated_and_blended() {
    // x [1, 2, 4, 4] -> Norm (gamma 1, beta 0) -> y.
    let mut b = Builder::new(Mode::Float);
    let x = b.value("x", &[1, 2, 4, 4], DType::F32, 0.0);
    let y = b.value("y", &[1, 2, 4, 4], DType::F32, 0.0);
    b.f32("n.gamma", &[2], &[1.0, 1.0]);
    b.f32("n.beta", &[2], &[0.0, 0.0]);
    b.f32("n.mean", &[2], &[0.5, -0.5]);
    b.f32("n.var", &[2], &[2.0, 3.0]);
    let norm = shiftnn_runtime::graph::NormRef {
        prefix: "n".into(),
        eps: 1e-5,
    };
    b.node(
        "norm",
        Op::Norm {
            norm,
            act: Act::None,
        },
        &[x],
        y,
    );
    let bytes = b.finish(&[x], &[y]);
    let model = Model::from_vec(&bytes).unwrap();
    let mut st = Student::new(&model).unwrap();
    let src = st.norms().to_vec();
    let mut r = Rng(12);
    let xs = inputs(&mut r, 10, 32);
    let refs: Vec<&[f32]> = xs.iter().map(|v| &v[..]).collect();
    let (mut m, mut v) = ([0f64; 2], [0f64; 2]);
    for xi in &xs {
        for (j, &e) in xi.iter().enumerate() {
            m[j / 16] += e as f64 / 160.0;
        }
    }
    for xi in &xs {
        for (j, &e) in xi.iter().enumerate() {
            v[j / 16] += (e as f64 - m[j / 16]).powi(2) / 160.0;
        }
    }
    st.estimate_stats(&refs, &src, 0.25).unwrap();
    for c in 0..2 {
        let want_m = 0.75 * src[0].mean[c] as f64 + 0.25 * m[c];
        let want_v = 0.75 * src[0].var[c] as f64 + 0.25 * v[c];
        assert!((st.norms()[0].mean[c] as f64 - want_m).abs() < 1e-5);
        assert!((st.norms()[0].var[c] as f64 - want_v).abs() < 1e-5);
    }
    // alpha 0 keeps the source.
    st.estimate_stats(&refs, &src, 0.0).unwrap();
    assert_eq!(st.norms(), &src[..]);
}

fn device_logits(model: &Model, blob: &[u8], key: &SigningKey, x: &[f32]) -> Vec<f32> {
    let shared = Arc::new(SharedParams::new(model).unwrap());
    shared.trust(key.verifying_key(), 0);
    shared.apply_patch(model, blob).unwrap();
    let mut s = Session::new(model).unwrap();
    s.set_shared(shared).unwrap();
    let mut out = vec![0f32; 5];
    s.run(&[x], &mut [&mut out]).unwrap();
    out
}

fn close(a: &[f32], b: &[f32], what: &str) {
    for (x, y) in a.iter().zip(b) {
        assert!(
            (x - y).abs() <= 1e-4 * (1.0 + y.abs()),
            "{what}: {a:?} vs {b:?}"
        );
    }
}

#[test]
fn folded_statistics_compute_the_same_function() {
    let bytes = every_op_model(24);
    let model = Model::from_vec(&bytes).unwrap();
    let mk = |fold: bool| {
        let c = LearnerConfig {
            fold_stats: fold,
            ..cfg(true)
        };
        Learner::new(&model, Box::new(RuleTeacher), c).unwrap()
    };
    let (mut plain, mut folded) = (mk(false), mk(true));
    let mut r = Rng(31);
    // Shifted inputs, so the re-estimated statistics move far.
    let xs: Vec<Vec<f32>> = inputs(&mut r, 24, 72)
        .into_iter()
        .map(|v| v.into_iter().map(|e| 2.5 * e + 0.7).collect())
        .collect();
    for x in &xs {
        plain.push(x.clone(), 0.3);
        folded.push(x.clone(), 0.3);
    }
    assert_eq!(plain.train(4).stats_samples, 24);
    assert_eq!(folded.train(4).stats_samples, 24);
    let (lp, lf) = (plain.layers(), folded.layers());
    assert!(lp.iter().all(|l| l.mean.is_some() && l.var.is_some()));
    assert!(lf.iter().all(|l| l.mean.is_none() && l.var.is_none()));
    assert_ne!(lp[0].gamma, lf[0].gamma);
    // Two devices, one sent the statistics, one the folded affine only:
    // same outputs, and the folded patch is about half the size.
    let key = SigningKey::from_bytes(&[5; 32]);
    let (bp, bf) = (
        build_patch(&model, 1, &lp, &key).unwrap(),
        build_patch(&model, 1, &lf, &key).unwrap(),
    );
    assert!(bf.len() < bp.len() * 2 / 3, "{} vs {}", bf.len(), bp.len());
    for x in inputs(&mut r, 4, 72) {
        let want = device_logits(&model, &bp, &key, &x);
        close(&device_logits(&model, &bf, &key, &x), &want, "folded patch");
        let y: Vec<f32> = x.iter().map(|e| 2.5 * e + 0.7).collect();
        close(
            &device_logits(&model, &bf, &key, &y),
            &device_logits(&model, &bp, &key, &y),
            "folded patch, shifted input",
        );
    }
    // Another worker adopts the full state (what workers exchange): same
    // student, same folded patch.
    let state = folded.state();
    assert!(state.iter().all(|l| l.mean.is_some() && l.var.is_some()));
    let mut other = mk(true);
    other.set_layers(&state).unwrap();
    assert_eq!(other.layers(), lf);
    let probe = &xs[0];
    let fa = other.student().forward(&[probe]).unwrap();
    let fb = folded.student().forward(&[probe]).unwrap();
    assert_eq!(fa.logits(0), fb.logits(0));
}
