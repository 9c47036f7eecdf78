//! Inference allocates nothing: a counting global allocator watches
//! `Session::run` after the session is built.

mod common;
use common::Builder;
use shiftnn_kernels::{codes::pack, Bits};
use shiftnn_runtime::graph::{Act, DType, Mode, Op, WeightKind, WeightRef};
use shiftnn_runtime::{Model, Session};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

struct Counting;
static ALLOCS: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    // Tests run on parallel threads: count only this thread's allocations.
    static MINE: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

fn count() {
    ALLOCS.fetch_add(1, Ordering::Relaxed);
    let _ = MINE.try_with(|c| c.set(c.get() + 1));
}

fn mine() -> usize {
    MINE.with(|c| c.get())
}

// SAFETY: forwards every call unchanged to the system allocator; only
// counts allocations.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        count();
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        count();
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn model(mode: Mode) -> Vec<u8> {
    let int8 = mode == Mode::Int8;
    let dt = if int8 { DType::I8 } else { DType::F32 };
    let mut b = Builder::new(mode);
    let x = b.value("x", &[1, 4, 6, 6], DType::F32, 0.0);
    let mut cur = x;
    if int8 {
        cur = b.value("xq", &[1, 4, 6, 6], DType::I8, 0.02);
        b.node("q", Op::Quantize, &[x], cur);
    }
    let codes: Vec<u8> = (0..8 * 36).map(|i| (i % 8) as u8).collect();
    let mut packed = vec![0u8; 8 * Bits::B3.row_bytes(36)];
    pack(&codes, Bits::B3, 8, 36, &mut packed);
    b.u8("c.weight", &[8, Bits::B3.row_bytes(36)], &packed);
    b.f32("c.wscale", &[8], &[0.01; 8]);
    let y = b.value("y", &[1, 8, 6, 6], dt, 0.05);
    let w = WeightRef {
        kind: WeightKind::Shift,
        bits: 3,
        tensor: "c.weight".into(),
        scale: "c.wscale".into(),
    };
    let conv = Op::Conv {
        kernel: [3, 3],
        strides: [1, 1],
        pads: [1; 4],
        dilations: [1, 1],
        groups: 1,
        weight: w,
        bias: None,
        norm: None,
        act: Act::Relu,
    };
    b.node("c", conv, &[cur], y);
    let s = b.value("s", &[1, 8, 6, 6], dt, 1.0 / 127.0);
    b.node("sig", Op::Act { act: Act::Sigmoid }, &[y], s);
    let p = b.value("p", &[1, 8, 1, 1], dt, 1.0 / 127.0);
    b.node("gap", Op::GlobalAvgPool, &[s], p);
    let f = b.value("f", &[1, 8], dt, 1.0 / 127.0);
    b.node("flat", Op::Reshape, &[p], f);
    let out = if int8 {
        let o = b.value("out", &[1, 8], DType::F32, 0.0);
        b.node("dq", Op::Dequantize, &[f], o);
        o
    } else {
        f
    };
    let sm = b.value("prob", &[1, 8], DType::F32, 0.0);
    b.node("softmax", Op::Softmax { axis: 1 }, &[out], sm);
    b.finish(&[x], &[sm])
}

#[test]
fn run_allocates_nothing() {
    for mode in [Mode::Int8, Mode::Float] {
        let bytes = model(mode);
        let model = Model::from_bytes(&bytes).unwrap();
        let mut s = Session::new(&model).unwrap();
        let x = vec![0.3f32; 4 * 36];
        let mut y = vec![0f32; 8];
        s.run(&[&x], &mut [&mut y]).unwrap();
        let before = mine();
        for _ in 0..10 {
            s.run(&[&x], &mut [&mut y]).unwrap();
        }
        let after = mine();
        assert_eq!(
            after - before,
            0,
            "{mode:?}: inference allocated {} times",
            after - before
        );
        assert!(
            (y.iter().sum::<f32>() - 1.0).abs() < 1e-5,
            "softmax output {y:?}"
        );
        // And the counter does count: building a session allocates.
        let _s2 = Session::new(&model).unwrap();
        assert!(mine() > after);
    }
}

#[test]
fn caller_arena_is_used_and_checked() {
    let bytes = model(Mode::Int8);
    let model = Model::from_bytes(&bytes).unwrap();
    let need = model.arena_bytes();
    let mut small = vec![0u8; need / 2];
    match Session::with_arena(&model, &mut small) {
        Err(shiftnn_runtime::Error::ArenaTooSmall { needed, given }) => {
            assert!(needed >= need);
            assert_eq!(given, need / 2);
        }
        other => panic!("expected ArenaTooSmall, got {:?}", other.err()),
    }
    let mut arena = vec![0u8; need + 64];
    let x = vec![0.3f32; 4 * 36];
    let (mut y1, mut y2) = (vec![0f32; 8], vec![0f32; 8]);
    Session::with_arena(&model, &mut arena)
        .unwrap()
        .run(&[&x], &mut [&mut y1])
        .unwrap();
    Session::new(&model)
        .unwrap()
        .run(&[&x], &mut [&mut y2])
        .unwrap();
    assert_eq!(y1, y2);
    assert!(
        arena.iter().any(|&b| b != 0),
        "the caller's arena was not used"
    );
}
