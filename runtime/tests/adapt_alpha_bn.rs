//! Alpha-BN: statistics recomputed from observed activations, mixed with
//! the source statistics, applied atomically.

mod adapt_common;
use adapt_common::{input, model, Builder, C};
use shiftnn_runtime::adapt::{AlphaBn, AlphaBnConfig};
use shiftnn_runtime::graph::{Act, DType, Mode, NormRef, Op, WeightKind, WeightRef};
use shiftnn_runtime::{Model, NormParams, Prepared, Session};

/// x [1,2,3,3] -> 1x1 conv (w = [[1, 0], [0.5, 0.5]], bias [0.1, -0.2],
/// fused "bn1", ReLU) -> Norm "bn2" -> GAP -> flatten -> softmax.
fn tiny() -> Vec<u8> {
    let mut b = Builder::new(Mode::Float);
    let x = b.value("x", &[1, 2, 3, 3], DType::F32, 0.0);
    b.f32("c.w", &[2, 2], &[1.0, 0.0, 0.5, 0.5]);
    b.f32("c.ws", &[2], &[1.0, 1.0]);
    b.f32("c.b", &[2], &[0.1, -0.2]);
    for p in ["bn1", "bn2"] {
        b.f32(&format!("{p}.gamma"), &[2], &[1.0, 1.0]);
        b.f32(&format!("{p}.beta"), &[2], &[0.0, 0.0]);
        b.f32(&format!("{p}.mean"), &[2], &[0.0, 0.0]);
        b.f32(&format!("{p}.var"), &[2], &[1.0, 1.0]);
    }
    let nr = |p: &str| NormRef {
        prefix: p.into(),
        eps: 1e-5,
    };
    let y = b.value("y", &[1, 2, 3, 3], DType::F32, 0.0);
    b.node(
        "c",
        Op::Conv {
            kernel: [1, 1],
            strides: [1, 1],
            pads: [0; 4],
            dilations: [1, 1],
            groups: 1,
            weight: WeightRef {
                kind: WeightKind::F32,
                bits: 0,
                tensor: "c.w".into(),
                scale: "c.ws".into(),
            },
            bias: Some("c.b".into()),
            norm: Some(nr("bn1")),
            act: Act::Relu,
        },
        &[x],
        y,
    );
    let n2 = b.value("n2", &[1, 2, 3, 3], DType::F32, 0.0);
    b.node(
        "bn2",
        Op::Norm {
            norm: nr("bn2"),
            act: Act::None,
        },
        &[y],
        n2,
    );
    let p = b.value("p", &[1, 2, 1, 1], DType::F32, 0.0);
    b.node("gap", Op::GlobalAvgPool, &[n2], p);
    let f = b.value("f", &[1, 2], DType::F32, 0.0);
    b.node("flat", Op::Reshape, &[p], f);
    let s = b.value("prob", &[1, 2], DType::F32, 0.0);
    b.node("sm", Op::Softmax { axis: 1 }, &[f], s);
    b.finish(&[x], &[s])
}

fn stats(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let m = v.iter().sum::<f64>() / n;
    (m, v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / n)
}

#[test]
fn exact_statistics_on_a_shifted_distribution() {
    let bytes = tiny();
    let m = Model::from_bytes(&bytes).unwrap();
    let mut s = Session::new(&m).unwrap();
    let mut ab = AlphaBn::new(&m, AlphaBnConfig { alpha: 0.1 }).unwrap();
    assert_eq!(ab.prefixes().collect::<Vec<_>>(), ["bn1", "bn2"]);
    // Shifted inputs: channel 0 around +2, channel 1 around -1.
    let mut r = adapt_common::Rng(5);
    let xs: Vec<Vec<f32>> = (0..4)
        .map(|_| {
            (0..18)
                .map(|i| if i < 9 { 2.0 } else { -1.0 } + r.f32(-0.5, 0.5))
                .collect()
        })
        .collect();
    let mut y = vec![0f32; 2];
    for x in &xs {
        ab.run(&mut s, &[x], &mut [&mut y]).unwrap();
    }
    assert_eq!(ab.samples(), 4);
    // Independent computation of the pre-norm activations.
    let k = 1.0 / (1.0f64 + 1e-5).sqrt();
    let (mut z0, mut z1, mut r0, mut r1) = (vec![], vec![], vec![], vec![]);
    for x in &xs {
        for j in 0..9 {
            let (a, b) = (x[j] as f64, x[9 + j] as f64);
            let (u, v) = (a + 0.1, 0.5 * a + 0.5 * b - 0.2);
            z0.push(u);
            z1.push(v);
            r0.push((u * k).max(0.0));
            r1.push((v * k).max(0.0));
        }
    }
    let base = Prepared::new(&m).unwrap();
    let est = ab.estimates(&base).unwrap();
    let want = |zs: [&Vec<f64>; 2]| -> NormParams {
        let (m0, v0) = stats(zs[0]);
        let (m1, v1) = stats(zs[1]);
        NormParams {
            gamma: vec![1.0; 2],
            beta: vec![0.0; 2],
            mean: vec![(0.1 * m0) as f32, (0.1 * m1) as f32],
            var: vec![(0.9 + 0.1 * v0) as f32, (0.9 + 0.1 * v1) as f32],
        }
    };
    for ((name, got), want) in est.iter().zip([want([&z0, &z1]), want([&r0, &r1])]) {
        for (g, w) in got
            .mean
            .iter()
            .chain(&got.var)
            .zip(want.mean.iter().chain(&want.var))
        {
            assert!((g - w).abs() < 1e-5, "{name}: {got:?} vs {want:?}");
        }
        assert_eq!((&got.gamma, &got.beta), (&want.gamma, &want.beta));
    }
    // Direction: from the source mean 0 towards the batch means (z about
    // 2.1 and 0.3), by a = 0.1.
    let m1 = &est[0].1.mean;
    assert!(
        (m1[0] - 0.21).abs() < 0.03 && (m1[1] - 0.03).abs() < 0.02,
        "{m1:?}"
    );
    // Update: all layers replaced, collector reset, outputs change.
    let before = {
        s.run(&[&xs[0]], &mut [&mut y]).unwrap();
        y.clone()
    };
    let next = ab.update(s.prepared()).unwrap();
    assert_eq!(ab.samples(), 0);
    assert_eq!(next.norms["bn1"].mean, est[0].1.mean);
    assert_eq!(next.norms["bn2"].var, est[1].1.var);
    s.set_prepared(next);
    s.run(&[&xs[0]], &mut [&mut y]).unwrap();
    assert_ne!(before, y);
    // Nothing observed since: no layer to update.
    assert!(ab.estimates(s.prepared()).unwrap().is_empty());
}

#[test]
fn int8_recompute_agrees_with_float_and_follows_the_spread() {
    let fb = model(Mode::Float, 1);
    let qb = model(Mode::Int8, 1);
    let (fm, qm) = (
        Model::from_bytes(&fb).unwrap(),
        Model::from_bytes(&qb).unwrap(),
    );
    let run = |m: &Model, spread: f32| {
        let mut s = Session::new(m).unwrap();
        let mut ab = AlphaBn::new(m, AlphaBnConfig::default()).unwrap();
        let mut y = vec![0f32; C];
        for i in 0..8 {
            let x = input(100 + i, 0.0, spread);
            ab.run(&mut s, &[&x], &mut [&mut y]).unwrap();
        }
        ab.estimates(s.prepared()).unwrap()
    };
    let (f, q) = (run(&fm, 1.0), run(&qm, 1.0));
    let src = fm.norm_params("bn1", C).unwrap();
    // bn1 (fused): the int8 session's dequantized inputs give nearly the
    // float statistics.
    for ch in 0..C {
        let (a, b) = (f[0].1.var[ch], q[0].1.var[ch]);
        assert!(
            (a - b).abs() <= 0.02 * a.abs() + 1e-4,
            "ch {ch}: {a} vs {b}"
        );
        let (a, b) = (f[0].1.mean[ch], q[0].1.mean[ch]);
        assert!((a - b).abs() <= 2e-3, "ch {ch}: {a} vs {b}");
    }
    // A wider input distribution raises every recomputed variance.
    let wide = run(&qm, 2.0);
    for ch in 0..C {
        assert!(wide[0].1.var[ch] > q[0].1.var[ch], "ch {ch}");
        // var_new - (1 - a) var_src = a var_batch grows about 4x.
        let a = q[0].1.var[ch] - 0.9 * src.var[ch];
        let b = wide[0].1.var[ch] - 0.9 * src.var[ch];
        assert!(b > 3.0 * a, "ch {ch}: {a} -> {b}");
    }
}
