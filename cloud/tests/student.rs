//! The student against the runtime (forward) and against finite
//! differences (backward), and the CEMA loss gradient.

mod common;
use common::*;
use shiftnn_cloud::loss;
use shiftnn_cloud::student::Student;
use shiftnn_runtime::{Model, Session};

fn softmax(x: &[f32]) -> Vec<f32> {
    let m = x.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    let e: Vec<f32> = x.iter().map(|v| (v - m).exp()).collect();
    let s: f32 = e.iter().sum();
    e.iter().map(|v| v / s).collect()
}

#[test]
fn forward_matches_the_float_runtime() {
    let bytes = every_op_model(7);
    let model = Model::from_vec(&bytes).unwrap();
    let st = Student::new(&model).unwrap();
    assert_eq!(st.norms().len(), 4);
    assert_eq!(st.classes(), 5);
    let mut r = Rng(3);
    let xs = inputs(&mut r, 6, st.input_len());
    let refs: Vec<&[f32]> = xs.iter().map(|x| &x[..]).collect();
    let fwd = st.forward(&refs).unwrap();
    let mut s = Session::new(&model).unwrap();
    for (i, x) in xs.iter().enumerate() {
        let mut out = vec![0f32; 5];
        s.run(&[x], &mut [&mut out]).unwrap();
        let p = softmax(fwd.logits(i));
        for (a, b) in p.iter().zip(&out) {
            assert!((a - b).abs() < 1e-5, "sample {i}: {p:?} vs {out:?}");
        }
    }
}

fn batch_loss(st: &Student, xs: &[&[f32]], ts: &[Vec<f32>], es: &[f32]) -> f64 {
    let fwd = st.forward(xs).unwrap();
    let l: Vec<&[f32]> = (0..fwd.len()).map(|i| fwd.logits(i)).collect();
    let t: Vec<&[f32]> = ts.iter().map(|t| &t[..]).collect();
    loss::cema(&l, &t, es, 0.4).0 as f64
}

#[test]
fn gamma_beta_gradients_match_finite_differences() {
    let bytes = every_op_model(11);
    let model = Model::from_vec(&bytes).unwrap();
    let mut st = Student::new(&model).unwrap();
    let mut r = Rng(5);
    let xs = inputs(&mut r, 4, st.input_len());
    let xs: Vec<&[f32]> = xs.iter().map(|x| &x[..]).collect();
    let ts: Vec<Vec<f32>> = (0..4)
        .map(|_| (0..5).map(|_| r.f32(-3.0, 3.0)).collect())
        .collect();
    let es = [0.1, 0.3, 0.35, 0.05];
    let fwd = st.forward(&xs).unwrap();
    let l: Vec<&[f32]> = (0..fwd.len()).map(|i| fwd.logits(i)).collect();
    let t: Vec<&[f32]> = ts.iter().map(|t| &t[..]).collect();
    let (_, dl) = loss::cema(&l, &t, &es, 0.4);
    let g = st.backward(&fwd, &dl).unwrap();
    let mut worst = 0f64;
    let (mut an_all, mut num_all) = (Vec::new(), Vec::new());
    let mut checked = 0;
    for layer in 0..st.norms().len() {
        for which in 0..2 {
            let c = st.norms()[layer].gamma.len();
            for ch in 0..c {
                let analytic = if which == 0 {
                    g.gamma[layer][ch]
                } else {
                    g.beta[layer][ch]
                } as f64;
                fn get(s: &mut Student, layer: usize, which: usize, ch: usize) -> &mut f32 {
                    let n = &mut s.norms_mut()[layer];
                    if which == 0 {
                        &mut n.gamma[ch]
                    } else {
                        &mut n.beta[ch]
                    }
                }
                // Three step sizes: f32 rounding spoils small steps, a kink
                // (ReLU, max, clip) within a step spoils large ones.
                let p0 = *get(&mut st, layer, which, ch);
                let mut err = f64::INFINITY;
                let mut numeric = 0.0;
                for h in [1e-2f32, 3e-3, 1e-3] {
                    *get(&mut st, layer, which, ch) = p0 + h;
                    let lp = batch_loss(&st, &xs, &ts, &es);
                    *get(&mut st, layer, which, ch) = p0 - h;
                    let lm = batch_loss(&st, &xs, &ts, &es);
                    *get(&mut st, layer, which, ch) = p0;
                    let n = (lp - lm) / (2.0 * h as f64);
                    let e = (n - analytic).abs() / (n.abs().max(analytic.abs()) + 1e-2);
                    if std::env::var("GC_DEBUG").is_ok() {
                        eprintln!("l{layer} w{which} c{ch} h{h}: {n} vs {analytic}");
                    }
                    if e < err {
                        err = e;
                        numeric = n;
                    }
                }
                an_all.push(analytic);
                num_all.push(numeric);
                assert!(
                    err < 0.1,
                    "layer {layer} {} ch {ch}: analytic {analytic} numeric {numeric}",
                    ["gamma", "beta"][which]
                );
                worst = worst.max(err);
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 2 * (4 + 4 + 4 + 5));
    // Every layer's gradient is non-trivial (the graph reaches all of them).
    for layer in 0..4 {
        assert!(
            g.beta[layer].iter().any(|v| v.abs() > 1e-4),
            "layer {layer} has no gradient"
        );
    }
    // Per element a kink or f32 rounding may cost a few percent; over the
    // whole gradient the error must be small.
    let diff: f64 = an_all
        .iter()
        .zip(&num_all)
        .map(|(a, n)| (a - n) * (a - n))
        .sum::<f64>()
        .sqrt();
    let norm: f64 = an_all.iter().map(|a| a * a).sum::<f64>().sqrt();
    eprintln!(
        "worst element {worst:.2e}, whole gradient {:.2e}",
        diff / norm
    );
    assert!(
        diff / norm < 1e-2,
        "relative gradient error {}",
        diff / norm
    );
}

#[test]
fn loss_gradient_matches_finite_differences() {
    let mut r = Rng(9);
    for _ in 0..20 {
        let s: Vec<f32> = (0..7).map(|_| r.f32(-4.0, 4.0)).collect();
        let t: Vec<f32> = (0..7).map(|_| r.f32(-4.0, 4.0)).collect();
        let (l0, g) = loss::sample_loss(&s, &t);
        assert!(l0.is_finite() && l0 >= 0.0);
        for j in 0..7 {
            let h = 1e-2f32;
            let mut sp = s.clone();
            sp[j] += h;
            let mut sm = s.clone();
            sm[j] -= h;
            let num = (loss::sample_loss(&sp, &t).0 - loss::sample_loss(&sm, &t).0) / (2.0 * h);
            assert!(
                (num - g[j]).abs() < 2e-3 + 1e-2 * g[j].abs(),
                "{j}: {num} vs {}",
                g[j]
            );
        }
    }
}

#[test]
fn loss_terms_and_weights() {
    // Equal student and teacher: KL = 0, loss = 3 H + CE.
    let s = [2.0f32, 0.0, -1.0];
    let (l, _) = loss::sample_loss(&s, &s);
    let p = softmax(&s);
    let h: f32 = -p.iter().map(|v| v * v.ln()).sum::<f32>();
    assert!((l - (3.0 * h - p[0].ln())).abs() < 1e-5);
    // Weight 1 at E = E_max, e^(ln C * 0.4) at E = 0, halving per ln 2 nats.
    assert!((loss::sample_weight(0.4, 0.4, 10) - 1.0).abs() < 1e-6);
    assert!((loss::sample_weight(0.0, 0.4, 10) - 10f32.powf(0.4)).abs() < 1e-4);
    // The batch loss is the weighted mean.
    let t = [0.0f32, 1.0, 0.0];
    let (la, _) = loss::sample_loss(&s, &s);
    let (lb, _) = loss::sample_loss(&s, &t);
    let (lw, _) = loss::cema(&[&s, &s], &[&s, &t], &[0.4, 0.0], 0.4);
    let wb = loss::sample_weight(0.0, 0.4, 3);
    assert!((lw - (la + wb * lb) / (1.0 + wb)).abs() < 1e-5);
}
