//! A session following shared parameters still allocates nothing per run,
//! including the run that picks up a swapped parameter set.

mod adapt_common;
use adapt_common::{input, model, C};
use shiftnn_runtime::adapt::{build_patch, PatchLayer, SharedParams, SigningKey};
use shiftnn_runtime::graph::Mode;
use shiftnn_runtime::{Model, Session};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Arc;

struct Counting;

thread_local! {
    static MINE: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

fn mine() -> usize {
    MINE.with(|c| c.get())
}

// SAFETY: forwards every call unchanged to the system allocator; only
// counts this thread's allocations.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let _ = MINE.try_with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        let _ = MINE.try_with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn shared_session_run_allocates_nothing() {
    for mode in [Mode::Int8, Mode::Float] {
        let bytes = model(mode, 1);
        let m = Model::from_bytes(&bytes).unwrap();
        let k = SigningKey::from_bytes(&[3; 32]);
        let shared = Arc::new(SharedParams::new(&m).unwrap());
        shared.trust(k.verifying_key(), 0);
        let mut s = Session::new(&m).unwrap();
        s.set_shared(shared.clone()).unwrap();
        let x = input(1, 0.0, 1.0);
        let mut y = vec![0f32; C];
        s.run(&[&x], &mut [&mut y]).unwrap();
        let before = mine();
        for _ in 0..10 {
            s.run(&[&x], &mut [&mut y]).unwrap();
        }
        assert_eq!(mine() - before, 0, "{mode:?}: steady runs allocated");
        let old = y.clone();
        let layer = PatchLayer {
            prefix: "bn2".into(),
            gamma: vec![1.7; C],
            beta: vec![0.2; C],
            mean: None,
            var: None,
        };
        let blob = build_patch(&m, 1, &[layer], &k).unwrap();
        shared.apply_patch(&m, &blob).unwrap();
        let before = mine();
        s.run(&[&x], &mut [&mut y]).unwrap();
        assert_eq!(mine() - before, 0, "{mode:?}: the swapping run allocated");
        assert_ne!(old, y, "{mode:?}: the patch was not picked up");
    }
}
