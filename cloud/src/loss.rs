//! The CEMA loss and its gradient wrt the student's logits.
//!
//! Per sample, with `p = softmax(s)` the student's prediction and
//! `q = softmax(t)` the teacher's:
//!
//! ```text
//! L_i = 3 H(p) + 3 KL(q || p) + CE(argmax q, p)
//! L   = sum_i w_i L_i / sum_i w_i,   w_i = 1 / exp(E_i - E_max)
//! ```
//!
//! `E_i` is the entropy the device measured when it selected the sample and
//! `E_max` the selection's upper bound, both given in units of `ln C` (as
//! `shiftnn_runtime::adapt::select` reports them) and converted to nats
//! here, so that the weight is CEMA's `exp(E_max - E_i)` with entropies in
//! nats. The device's entropy is used rather than one recomputed from the
//! student, because it is what the device saw (the int8 network, not its
//! float emulation) and it needs no extra forward pass.

/// Weight of the entropy term.
pub const ENTROPY_WEIGHT: f32 = 3.0;
/// Weight of the KL term.
pub const KL_WEIGHT: f32 = 3.0;

/// Log-softmax, computed stably in f64.
fn log_softmax(x: &[f32]) -> Vec<f64> {
    let m = x.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
    let lse = x.iter().map(|&v| (v as f64 - m).exp()).sum::<f64>().ln() + m;
    x.iter().map(|&v| v as f64 - lse).collect()
}

/// The per-sample CEMA weight `exp((E_max - E) ln C)`, entropies in units
/// of `ln C`.
pub fn sample_weight(entropy: f32, e_max: f32, classes: usize) -> f32 {
    let lnc = (classes.max(2) as f64).ln();
    (((e_max - entropy) as f64) * lnc).exp().min(1e6) as f32
}

/// Loss of one sample (unweighted) and its gradient wrt the student logits.
pub fn sample_loss(student: &[f32], teacher: &[f32]) -> (f32, Vec<f32>) {
    assert_eq!(student.len(), teacher.len(), "logit counts differ");
    let ls = log_softmax(student);
    let lt = log_softmax(teacher);
    let p: Vec<f64> = ls.iter().map(|v| v.exp()).collect();
    let q: Vec<f64> = lt.iter().map(|v| v.exp()).collect();
    let y = teacher
        .iter()
        .enumerate()
        .fold(
            (0, f32::NEG_INFINITY),
            |b, (i, &v)| if v > b.1 { (i, v) } else { b },
        )
        .0;
    let h: f64 = -p.iter().zip(&ls).map(|(a, b)| a * b).sum::<f64>();
    let kl: f64 = q
        .iter()
        .zip(lt.iter().zip(&ls))
        .map(|(a, (b, c))| a * (b - c))
        .sum();
    let ce = -ls[y];
    let (we, wk) = (ENTROPY_WEIGHT as f64, KL_WEIGHT as f64);
    let loss = we * h + wk * kl + ce;
    // dH/ds_j = -p_j (log p_j + H); dKL/ds_j = p_j - q_j; dCE/ds_j = p_j - [j = y].
    let grad = (0..p.len())
        .map(|j| {
            let onehot = (j == y) as u8 as f64;
            (we * (-p[j] * (ls[j] + h)) + wk * (p[j] - q[j]) + (p[j] - onehot)) as f32
        })
        .collect();
    (loss as f32, grad)
}

/// Weighted CEMA loss of a batch and d loss / d logits per sample.
/// `entropies` and `e_max` in units of `ln C`.
pub fn cema(
    student: &[&[f32]],
    teacher: &[&[f32]],
    entropies: &[f32],
    e_max: f32,
) -> (f32, Vec<Vec<f32>>) {
    assert!(student.len() == teacher.len() && student.len() == entropies.len());
    if student.is_empty() {
        return (0.0, Vec::new());
    }
    let c = student[0].len();
    let w: Vec<f32> = entropies
        .iter()
        .map(|&e| sample_weight(e, e_max, c))
        .collect();
    let wsum: f32 = w.iter().sum::<f32>().max(f32::MIN_POSITIVE);
    let mut total = 0f64;
    let grads = student
        .iter()
        .zip(teacher)
        .zip(&w)
        .map(|((s, t), &wi)| {
            let (l, g) = sample_loss(s, t);
            total += (wi * l) as f64;
            g.into_iter().map(|v| v * wi / wsum).collect()
        })
        .collect();
    ((total / wsum as f64) as f32, grads)
}
