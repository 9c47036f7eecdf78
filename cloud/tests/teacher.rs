//! The adaptive teacher (statistics re-estimated from uploads) and the
//! learner's relabelling of its replay buffer when the teacher changes.

mod common;
use common::*;
use shiftnn_cloud::student::Student;
use shiftnn_cloud::{AdaptiveTeacher, Learner, LearnerConfig, Teacher};
use shiftnn_runtime::Model;

/// Shifted inputs, so that re-estimated statistics differ from the file's.
fn shifted(r: &mut Rng, n: usize) -> Vec<Vec<f32>> {
    inputs(r, n, 72)
        .into_iter()
        .map(|x| x.into_iter().map(|v| 2.0 * v + 0.7).collect())
        .collect()
}

#[test]
fn adaptive_teacher_is_the_float_network_and_adapts_its_statistics() {
    let model = Model::from_vec(&every_op_model(31)).unwrap();
    assert!(AdaptiveTeacher::new(&model, 1.5, 8).is_err());
    let mut t = AdaptiveTeacher::new(&model, 1.0, 8).unwrap();
    let net = Student::new(&model).unwrap();
    let xs = shifted(&mut Rng(5), 12);
    let refs: Vec<&[f32]> = xs.iter().map(|v| &v[..]).collect();
    let before = t.logits_batch(&refs).unwrap();
    let want = net.forward(&refs).unwrap();
    for (i, x) in refs.iter().enumerate() {
        assert_eq!(before[i], want.logits(i));
        assert_eq!(t.logits(x).unwrap(), before[i]);
    }
    // Too few samples: the teacher stays as it was.
    assert!(!t.adapt(&refs[..7]).unwrap());
    assert_eq!(t.net().norms(), net.norms());
    assert!(t.adapt(&refs).unwrap());
    let mut adapted = net.clone();
    adapted.estimate_stats(&refs, net.norms(), 1.0).unwrap();
    assert_eq!(t.net().norms(), adapted.norms());
    assert_ne!(t.logits(refs[0]).unwrap(), before[0]);
    // Bad input is an error, not a panic.
    assert!(t.logits(&[0.0; 3]).is_err());
}

/// Logits `[k, 0, 0, 0, 0]` after `k` adaptations; optionally fails to
/// label anything once adapted.
struct Versioned {
    k: f32,
    fail_after_adapt: bool,
}

impl Teacher for Versioned {
    fn logits(&mut self, _: &[f32]) -> anyhow::Result<Vec<f32>> {
        if self.fail_after_adapt && self.k > 0.0 {
            anyhow::bail!("teacher down");
        }
        Ok(vec![self.k, 0.0, 0.0, 0.0, 0.0])
    }

    fn adapt(&mut self, inputs: &[&[f32]]) -> anyhow::Result<bool> {
        self.k += 1.0;
        Ok(inputs.len() >= 8)
    }
}

fn cfg() -> LearnerConfig {
    LearnerConfig {
        lr: 0.01,
        batch: 8,
        update_stats: true,
        replay_capacity: 64,
        stats_min_samples: 8,
        ..LearnerConfig::default()
    }
}

/// Every replayed label is the one of the generation that gave it.
fn labels_consistent(l: &Learner) -> usize {
    let mut fresh = 0;
    for s in l.replay().iter() {
        assert_eq!(s.teacher[0], s.label_gen as f32);
        fresh += (s.label_gen > 0) as usize;
    }
    fresh
}

#[test]
fn the_learner_relabels_drawn_samples_when_the_teacher_adapts() {
    let model = Model::from_vec(&every_op_model(32)).unwrap();
    let v = Versioned {
        k: 0.0,
        fail_after_adapt: false,
    };
    let mut l = Learner::new(&model, Box::new(v), cfg()).unwrap();
    let mut r = Rng(9);
    for x in shifted(&mut r, 5) {
        l.push(x, 0.3);
    }
    // Below stats_min_samples the teacher is not asked to adapt.
    assert_eq!(l.train(1).relabelled, 0);
    assert_eq!(labels_consistent(&l), 0);
    for x in shifted(&mut r, 11) {
        l.push(x, 0.3);
    }
    let st = l.train(2);
    assert_eq!((st.stats_samples, st.steps), (16, 2));
    // 2 steps of 8 draws (with replacement) from 16 samples.
    assert!(st.relabelled > 0 && st.relabelled <= 16, "{st:?}");
    assert_eq!(labels_consistent(&l), st.relabelled);
    // Drawn again after another adaptation: labels of generation 2.
    let st = l.train(20);
    assert!(st.relabelled > 0);
    assert!(l.replay().iter().any(|s| s.label_gen == 2));
    labels_consistent(&l);
    // Without SGD the teacher's labels are unused: it is not adapted.
    let v = Versioned {
        k: 0.0,
        fail_after_adapt: false,
    };
    let no_sgd = LearnerConfig { lr: 0.0, ..cfg() };
    let mut z = Learner::new(&model, Box::new(v), no_sgd).unwrap();
    for x in shifted(&mut r, 16) {
        z.push(x, 0.3);
    }
    let st = z.train(5);
    assert_eq!((st.stats_samples, st.steps, st.relabelled), (16, 0, 0));
    assert_eq!(labels_consistent(&z), 0);
    // A teacher that fails to relabel leaves the old labels in place.
    let down = Versioned {
        k: 0.0,
        fail_after_adapt: true,
    };
    let mut d = Learner::new(&model, Box::new(down), cfg()).unwrap();
    for x in shifted(&mut r, 16) {
        d.push(x, 0.3);
    }
    assert_eq!(d.train(3).relabelled, 0);
    assert!(d
        .replay()
        .iter()
        .all(|s| s.teacher[0] == 0.0 && s.label_gen == 0));
    // The teacher adapts even when the student's statistics stay the file's.
    let v = Versioned {
        k: 0.0,
        fail_after_adapt: false,
    };
    let no_stats = LearnerConfig {
        update_stats: false,
        ..cfg()
    };
    let mut s = Learner::new(&model, Box::new(v), no_stats).unwrap();
    for x in shifted(&mut r, 16) {
        s.push(x, 0.3);
    }
    let st = s.train(2);
    assert_eq!(st.stats_samples, 0);
    assert!(st.relabelled > 0);
    assert!(s.layers().iter().all(|p| p.mean.is_none()));
    assert_eq!(labels_consistent(&s), st.relabelled);
}

#[test]
fn an_adaptive_teacher_drives_the_learner() {
    let model = Model::from_vec(&every_op_model(33)).unwrap();
    let t = AdaptiveTeacher::new(&model, 1.0, 8).unwrap();
    let mut l = Learner::new(&model, Box::new(t), cfg()).unwrap();
    let xs = shifted(&mut Rng(10), 20);
    for x in &xs {
        l.push(x.clone(), 0.3);
    }
    let st = l.train(3);
    assert_eq!(st.steps, 3);
    assert!(st.relabelled > 0);
    // Relabelled samples carry the labels of the teacher with statistics of
    // these inputs; the others those of the file's teacher.
    let refs: Vec<&[f32]> = xs.iter().map(|v| &v[..]).collect();
    let old = AdaptiveTeacher::new(&model, 1.0, 8)
        .unwrap()
        .logits_batch(&refs)
        .unwrap();
    let mut want = AdaptiveTeacher::new(&model, 1.0, 8).unwrap();
    assert!(want.adapt(&refs).unwrap());
    let new = want.logits_batch(&refs).unwrap();
    let mut fresh = 0;
    for ((s, o), n) in l.replay().iter().zip(&old).zip(&new) {
        if s.label_gen == 1 {
            assert_eq!(&s.teacher, n);
            fresh += 1;
        } else {
            assert_eq!(&s.teacher, o);
        }
    }
    assert_eq!(fresh, st.relabelled);
}

#[test]
fn the_adaptive_factory_makes_independent_teachers() {
    let model = Model::from_vec(&every_op_model(34)).unwrap();
    assert!(shiftnn_cloud::teacher::adaptive_factory(&model, 2.0, 8).is_err());
    let f = shiftnn_cloud::teacher::adaptive_factory(&model, 1.0, 8).unwrap();
    let (mut a, mut b) = (f().unwrap(), f().unwrap());
    let x = [0.1f32; 72];
    let before = a.logits(&x).unwrap();
    assert_eq!(before.len(), 5);
    let xs = shifted(&mut Rng(11), 8);
    let refs: Vec<&[f32]> = xs.iter().map(|v| &v[..]).collect();
    assert!(a.adapt(&refs).unwrap());
    assert_ne!(a.logits(&x).unwrap(), before);
    assert_eq!(b.logits(&x).unwrap(), before);
}
