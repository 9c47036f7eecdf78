//! The firmware test: runs the committed Fashion-MNIST model (4 bits, int8)
//! on the committed test images, compares every logit bit for bit with the
//! host's, checks that bad inputs are errors (not crashes), prints a summary
//! through semihosting and exits non-zero on any mismatch.
#![no_std]
#![no_main]

use cortex_m_rt::entry;
use shiftnn_firmware::fixtures::{self, ARENA_BYTES, CLASSES, IMAGE_LEN, N_IMAGES};
use shiftnn_firmware::{println, Arena};
use shiftnn_runtime::{AlignedBytes, Error, Model, Session};

static mut ARENA: Arena = Arena([0; ARENA_BYTES]);

/// The model again, one byte off alignment (for the misaligned case).
#[repr(C)]
struct OffByOne<B: ?Sized> {
    pad: u8,
    bytes: B,
}
static MISALIGNED: AlignedBytes<OffByOne<[u8; MODEL_LEN]>> = AlignedBytes(OffByOne {
    pad: 0,
    bytes: *include_bytes!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/firmware/fmnist_b4_int8.shift"
    )),
});
const MODEL_LEN: usize = include_bytes!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/fixtures/firmware/fmnist_b4_int8.shift"
))
.len();

/// A header claiming more bytes than the buffer holds.
static GARBAGE: AlignedBytes<[u8; 64]> = AlignedBytes([0xff; 64]);

fn expect_err(what: &str, r: Result<(), Error>, ok: impl Fn(&Error) -> bool) -> bool {
    match r {
        Err(e) if ok(&e) => {
            println!("  negative: {:<28} -> error: {}", what, e);
            true
        }
        Err(e) => {
            println!("  negative: {:<28} -> WRONG error: {}", what, e);
            false
        }
        Ok(()) => {
            println!("  negative: {:<28} -> NO ERROR", what);
            false
        }
    }
}

#[entry]
fn main() -> ! {
    shiftnn_firmware::init();
    let insn_per_tick_x1000 = shiftnn_firmware::calibrate();
    println!("shiftnn firmware test on {}", shiftnn_firmware::TARGET);
    let mut failures = 0u32;

    // Errors, not crashes.
    let ok = [
        expect_err(
            "truncated model",
            Model::from_bytes(&fixtures::MODEL[..fixtures::MODEL.len() / 2]).map(drop),
            |e| matches!(e, Error::Container(_)),
        ),
        expect_err(
            "garbage model header",
            Model::from_bytes(&GARBAGE.0).map(drop),
            |e| matches!(e, Error::Container(_) | Error::Limit(_)),
        ),
        expect_err(
            "misaligned model buffer",
            Model::from_bytes(&MISALIGNED.0.bytes).map(drop),
            |e| matches!(e, Error::Misaligned { .. }),
        ),
    ];
    failures += ok.iter().filter(|&&b| !b).count() as u32;

    let allocs0 = shiftnn_firmware::heap_allocs();
    let model = match Model::from_bytes(fixtures::MODEL) {
        Ok(m) => m,
        Err(e) => {
            println!("FAIL: the model does not load: {}", e);
            shiftnn_firmware::exit(1)
        }
    };
    if model.arena_bytes() != ARENA_BYTES || model.input_len(0) != IMAGE_LEN {
        println!(
            "FAIL: model needs an arena of {} bytes and {} inputs; firmware has {} and {}",
            model.arena_bytes(),
            model.input_len(0),
            ARENA_BYTES,
            IMAGE_LEN
        );
        shiftnn_firmware::exit(1)
    }
    // SAFETY: main runs once and never returns; this is the only reference
    // ever made to ARENA.
    let arena: &'static mut [u8; ARENA_BYTES] = unsafe { &mut (*core::ptr::addr_of_mut!(ARENA)).0 };
    let small = Session::with_arena(&model, &mut arena[..ARENA_BYTES - 1]).map(drop);
    failures += !expect_err(
        "arena one byte short",
        small,
        |e| matches!(e, Error::ArenaTooSmall { needed, .. } if *needed == ARENA_BYTES),
    ) as u32;
    let mut session = match Session::with_arena(&model, arena) {
        Ok(s) => s,
        Err(e) => {
            println!("FAIL: session: {}", e);
            shiftnn_firmware::exit(1)
        }
    };
    let load_allocs = shiftnn_firmware::heap_allocs() - allocs0;
    let load_heap = shiftnn_firmware::heap_used();

    let images = fixtures::images();
    let expected = fixtures::logits();
    let mut out = [0f32; CLASSES];
    let r = session.run(&[&images[..IMAGE_LEN - 1]], &mut [&mut out]);
    failures += !expect_err("input one value short", r, |e| matches!(e, Error::Io(_))) as u32;

    // The real run: no allocation allowed.
    let allocs_before = shiftnn_firmware::heap_allocs();
    let (mut exact, mut correct, mut ticks) = (0usize, 0usize, 0u64);
    for i in 0..N_IMAGES {
        let x = &images[i * IMAGE_LEN..(i + 1) * IMAGE_LEN];
        let want = &expected[i * CLASSES..(i + 1) * CLASSES];
        let t0 = shiftnn_firmware::ticks();
        let r = session.run(&[x], &mut [&mut out]);
        ticks += shiftnn_firmware::ticks().saturating_sub(t0);
        if let Err(e) = r {
            println!("  image {:2}: ERROR {}", i, e);
            continue;
        }
        let same = out
            .iter()
            .zip(want)
            .all(|(a, b)| a.to_bits() == b.to_bits());
        let pred = (0..CLASSES).fold(0, |b, k| if out[k] > out[b] { k } else { b });
        exact += same as usize;
        correct += (pred == fixtures::LABELS[i] as usize) as usize;
        if !same {
            println!("  image {:2}: MISMATCH got {:?}", i, out);
            println!("            expected {:?}", want);
        }
    }
    let run_allocs = shiftnn_firmware::heap_allocs() - allocs_before;
    if exact != N_IMAGES {
        failures += 1;
    }
    if run_allocs != 0 {
        println!("FAIL: inference allocated {} times", run_allocs);
        failures += 1;
    }
    let insns = ticks * insn_per_tick_x1000 / 1000 / N_IMAGES as u64;
    println!(
        "logits bit-exact with the host: {}/{} images; top-1 {}/{}",
        exact, N_IMAGES, correct, N_IMAGES
    );
    println!(
        "memory: arena {} B (static), heap at load {} B in {} allocations (peak {} B), \
         allocations during inference {}, stack high-water {} B",
        ARENA_BYTES,
        load_heap,
        load_allocs,
        shiftnn_firmware::heap_peak(),
        run_allocs,
        shiftnn_firmware::stack_high_water()
    );
    println!(
        "instructions per inference: {} (SysTick under -icount, {}.{:03} insn/tick)",
        insns,
        insn_per_tick_x1000 / 1000,
        insn_per_tick_x1000 % 1000
    );
    if failures == 0 {
        println!("firmware test: PASS");
        shiftnn_firmware::exit(0)
    } else {
        println!("firmware test: FAIL ({} problem(s))", failures);
        shiftnn_firmware::exit(1)
    }
}
