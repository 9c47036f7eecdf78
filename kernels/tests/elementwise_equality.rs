//! `shiftnn_kernels::elementwise` against its `scalar` references, bit for
//! bit, on every ISA level this CPU runs (each level's build called
//! directly with `*_at`, and the dispatching entry point under
//! `set_isa_cap`).
//!
//! * quantize: every `f32` near a rounding decision in and around the int8
//!   range (each half-integer from -131.5 to 131.5 and its 64 neighbours
//!   each side), the special values (NaN with either sign and any payload,
//!   infinities, zeros, subnormals, `f32::MAX`), a sweep of every 251st
//!   bit pattern, and random values and scales; `all_f32_bit_patterns`
//!   (ignored: ~15 s in release) checks all 2^32.
//! * add: all 65536 `(a, b)` pairs for requantizers from
//!   `AddRequant::from_real` over the scale ratios residual adds use (with
//!   and without a fused ReLU or ReLU6 clamp), for hand-made ones at the
//!   edges of the fast path's `i32` rewrite (extreme multipliers, shifts
//!   16 and 47, the offset bound), and for ones outside it (which run the
//!   reference); random lengths and unaligned starts for the tails.

use proptest::prelude::*;
use shiftnn_kernels::dispatch::{self, Isa};
use shiftnn_kernels::elementwise;
use shiftnn_kernels::scalar::{self, AddRequant};

fn levels() -> Vec<Isa> {
    Isa::ALL.into_iter().filter(|i| i.available()).collect()
}

/// `quantize_i8` equals the reference on `x` at every level and through
/// the dispatcher.
fn check_quantize(x: &[f32], inv_scale: f32) {
    let mut want = vec![0i8; x.len()];
    scalar::quantize_i8(x, inv_scale, &mut want);
    for isa in levels() {
        let mut got = vec![0x55i8; x.len()];
        elementwise::quantize_i8_at(isa, x, inv_scale, &mut got);
        if got != want {
            let i = (0..x.len()).find(|&i| got[i] != want[i]).unwrap();
            panic!(
                "{}: quantize({:e} = {:#010x}, inv_scale {inv_scale:e}) = {}, reference {}",
                isa.name(),
                x[i],
                x[i].to_bits(),
                got[i],
                want[i]
            );
        }
    }
    let mut got = vec![0x55i8; x.len()];
    elementwise::quantize_i8(x, inv_scale, &mut got);
    assert_eq!(got, want, "dispatched quantize, inv_scale {inv_scale:e}");
}

/// `add_i8` equals the reference at every level and through the
/// dispatcher.
fn check_add(a: &[i8], b: &[i8], rq: &AddRequant) {
    let mut want = vec![0i8; a.len()];
    scalar::add_i8(a, b, rq, &mut want);
    for isa in levels() {
        let mut got = vec![0x55i8; a.len()];
        elementwise::add_i8_at(isa, a, b, rq, &mut got);
        if got != want {
            let i = (0..a.len()).find(|&i| got[i] != want[i]).unwrap();
            panic!(
                "{}: add({}, {}) with {rq:?} = {}, reference {}",
                isa.name(),
                a[i],
                b[i],
                got[i],
                want[i]
            );
        }
    }
    let mut got = vec![0x55i8; a.len()];
    elementwise::add_i8(a, b, rq, &mut got);
    assert_eq!(got, want, "dispatched add, {rq:?}");
}

/// Every `(a, b)` pair, laid out so that each vector block holds a mix.
fn all_pairs() -> (Vec<i8>, Vec<i8>) {
    (0..1u32 << 16)
        .map(|i| ((i & 0xff) as u8 as i8, (i >> 8) as u8 as i8))
        .unzip()
}

/// Step `x` by `n` ulps (toward +inf for `n > 0`), staying finite.
fn ulps(x: f32, n: i32) -> f32 {
    let mut v = x;
    for _ in 0..n.unsigned_abs() {
        v = if n > 0 { v.next_up() } else { v.next_down() };
    }
    v
}

#[test]
fn quantize_rounding_decisions_and_saturation() {
    // Every half-integer in and just beyond the int8 range with its
    // neighbours: ties (round half away from zero), the last values that
    // round down, the saturation edges -128.5, -129, 127.5, 128.
    let mut x = Vec::new();
    for k in -263..=263 {
        let h = k as f32 / 2.0;
        for d in -64..=64 {
            x.push(ulps(h, d));
        }
    }
    // Every f32 in (-1, 1) near 0 and 0.5 is covered above; add the
    // largest below 0.5, which rounds to 1 if added to 0.5 in f32.
    x.extend([0.49999997f32, -0.49999997, 0.5, -0.5, 1.5, -1.5, 2.5, -2.5]);
    check_quantize(&x, 1.0);
    // The same decisions reached through a product.
    let scaled: Vec<f32> = x.iter().map(|&v| v * 4.0).collect();
    check_quantize(&scaled, 0.25);
}

#[test]
fn quantize_special_values() {
    let x = [
        f32::NAN,
        -f32::NAN,
        f32::from_bits(0x7f80_0001), // signalling NaN
        f32::from_bits(0xffc0_1234), // negative NaN with a payload
        f32::INFINITY,
        f32::NEG_INFINITY,
        0.0,
        -0.0,
        f32::MIN_POSITIVE,
        -f32::MIN_POSITIVE,
        f32::from_bits(1), // smallest subnormal
        -f32::from_bits(1),
        f32::from_bits(0x007f_ffff), // largest subnormal
        f32::MAX,
        f32::MIN,
        2147483648.0,
        -2147483904.0,
        1e20,
        -1e20,
        16777216.0,
        16777217.0,
    ];
    // Odd length, and every value at every position of a vector block.
    let mut xs = Vec::new();
    for r in 0..67 {
        xs.extend(x.iter().cycle().skip(r).take(x.len()));
    }
    for inv_scale in [
        1.0,
        -1.0,
        0.0,
        -0.0,
        40.0,
        1e-30,
        3e38,
        f32::INFINITY,
        f32::NAN,
        f32::from_bits(1),
    ] {
        check_quantize(&xs, inv_scale);
    }
}

#[test]
fn quantize_bit_pattern_sweep() {
    // Every 251st bit pattern (17 million values of every class).
    let x: Vec<f32> = (0..=u32::MAX / 251)
        .map(|i| f32::from_bits(i * 251))
        .collect();
    check_quantize(&x, 1.0);
    check_quantize(&x, 1.0 / 0.0173);
}

/// All 2^32 inputs; run with `cargo test --release -p shiftnn-kernels
/// --test elementwise_equality -- --ignored`.
#[test]
#[ignore = "exhaustive: ~15 s in release"]
fn all_f32_bit_patterns() {
    let mut x = vec![0f32; 1 << 24];
    for hi in 0..256u32 {
        for (i, v) in x.iter_mut().enumerate() {
            *v = f32::from_bits(hi << 24 | i as u32);
        }
        check_quantize(&x, 1.0);
    }
}

/// The scale ratios of ResNet residual adds and the clamps of fused
/// activations, as the runtime derives them.
#[test]
fn add_from_real_all_pairs() {
    let (a, b) = all_pairs();
    let ratios = [
        1.0, 0.5, 2.0, 0.71, 1.3, 0.0173, 0.999, 1.0001, 3.7, 17.0, 127.0, 1e-3, 1e-7, 0.0,
    ];
    for &ga in &ratios {
        for &gb in &ratios {
            for (lo, hi) in [(-128, 127), (0, 127), (0, 6), (-1, 1), (5, 5)] {
                check_add(&a, &b, &AddRequant::from_real(ga, gb, lo, hi));
                check_add(&a, &b, &AddRequant::from_real(-ga, gb, lo, hi));
            }
        }
    }
    // Saturating multipliers (a ratio of 128 and more) and non-finite ones.
    for ga in [128.0, 1e6, f64::INFINITY, f64::NAN, -1e9] {
        check_add(&a, &b, &AddRequant::from_real(ga, 0.5, -128, 127));
        check_add(&a, &b, &AddRequant::from_real(0.5, ga, -128, 127));
    }
}

/// Requantizers at the edges of the fast path's range, and outside it.
#[test]
fn add_edge_requantizers_all_pairs() {
    let (a, b) = all_pairs();
    let ms = [
        0,
        1,
        -1,
        0xffff,
        0x1_0000,
        -0x1_0000,
        0x7fff_0000,
        i32::MAX,
        i32::MIN,
        i32::MIN + 1,
        (1 << 24) + 0x8000,
        // The AVX-512 pair split's corners: m_lo = 0x7fff, m_hi = -2^15,
        // and the first multipliers past its range.
        0x7fff,
        0x3fff_ffff,
        -0x4000_0000,
        0x4000_0000,
        -0x4000_0001,
    ];
    for &ma in &ms {
        for &mb in &ms {
            for (shift, offset) in [
                (15, 1 << 14),
                (15, -(1 << 45)),
                (46, 1 << 45),
                (46, (1 << 45) + 0x7fff),
                (16, 1 << 15),
                (24, 1 << 23),
                (31, 1 << 30),
                (47, 1 << 46),
                (47, -(1 << 46)),
                (24, (1 << 46) + 0xffff),
                (24, -12345),
                // Outside the fast paths: the reference runs.
                (0, 0),
                (48, 1 << 47),
                (62, 1 << 61),
                (24, (1 << 46) + (1 << 16)),
                (24, -(1 << 50)),
            ] {
                let rq = AddRequant {
                    ma,
                    mb,
                    shift,
                    offset,
                    lo: -128,
                    hi: 127,
                };
                check_add(&a, &b, &rq);
            }
        }
    }
}

/// `lo > hi` makes the reference panic (`clamp`); so must the fast path.
#[test]
fn add_inverted_clamp_panics_like_the_reference() {
    let rq = AddRequant::from_real(1.0, 1.0, 1, 0);
    let (a, b) = ([1i8; 40], [2i8; 40]);
    let reference = std::panic::catch_unwind(|| scalar::add_i8(&a, &b, &rq, &mut [0; 40]));
    assert!(reference.is_err());
    for isa in levels() {
        let r = std::panic::catch_unwind(|| elementwise::add_i8_at(isa, &a, &b, &rq, &mut [0; 40]));
        assert!(r.is_err(), "{}", isa.name());
    }
}

/// The dispatcher under every cap picks a build that equals the
/// reference (the cap is process-wide; every test here is exact at every
/// level, so the other tests do not care).
#[test]
fn capped_dispatch_equals_reference() {
    let (a, b) = all_pairs();
    let rq = AddRequant::from_real(0.83, 1.21, 0, 127);
    let x: Vec<f32> = (0..70_001).map(|i| (i as f32 - 35_000.0) / 131.0).collect();
    for isa in levels() {
        dispatch::set_isa_cap(Some(isa));
        assert_eq!(dispatch::isa(), isa);
        check_add(&a, &b, &rq);
        check_quantize(&x, 0.37);
    }
    dispatch::set_isa_cap(None);
}

fn add_case() -> impl Strategy<Value = (Vec<i8>, Vec<i8>, usize, f64, f64, i8, i8)> {
    (0usize..300, 0usize..70)
        .prop_flat_map(|(n, skip)| {
            (
                prop::collection::vec(any::<i8>(), n + skip),
                prop::collection::vec(any::<i8>(), n + skip),
                Just(skip),
                -4.0f64..4.0,
                -4.0f64..4.0,
                any::<i8>(),
                any::<i8>(),
            )
        })
        .prop_map(|(a, b, skip, ga, gb, x, y)| (a, b, skip, ga, gb, x.min(y), x.max(y)))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Random lengths (every tail) and unaligned starts.
    #[test]
    fn add_random_lengths((a, b, skip, ga, gb, lo, hi) in add_case()) {
        check_add(&a[skip..], &b[skip..], &AddRequant::from_real(ga, gb, lo, hi));
    }

    /// Random values, scales, lengths and unaligned starts.
    #[test]
    fn quantize_random(
        x in prop::collection::vec(any::<f32>(), 0..300),
        skip in 0usize..17,
        inv_scale in any::<f32>(),
        small in prop::collection::vec(-200.0f32..200.0, 0..300),
    ) {
        check_quantize(&x[skip.min(x.len())..], inv_scale);
        check_quantize(&small[skip.min(small.len())..], 1.0);
        check_quantize(&small, 0.731);
    }
}
