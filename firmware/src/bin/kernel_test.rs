//! The Cortex-M kernels against `scalar`, on the Cortex-M itself: every
//! int8 kernel registered for this target (`dsp/dot`, `dsp/shift`,
//! `dsp/w8`) and the dispatching entry points, on fixed edge cases and
//! randomized shapes (odd channels, `k` tails, padding, strides,
//! dilations, groups, depthwise, 1x1, linear, b = 2, 3, 4, channel-range
//! splits), bit for bit. Then instructions per call of each kernel on the
//! Fashion-MNIST model's layer shapes (meaningful under `-icount`). Exits
//! non-zero on any mismatch, or if no DSP kernel is registered.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::vec;
use alloc::vec::Vec;
use cortex_m_rt::entry;
use shiftnn_firmware::println;
use shiftnn_kernels::dispatch::{self, Family, Isa, KernelFn, Op};
use shiftnn_kernels::{scalar, Bits, Conv2dGeom, PackedRows, Requant};

/// Random cases per run (each checked with b = 2, 3 and 4).
const CASES: usize = 120;
/// Largest random case, in MACs (keeps the scalar runs short).
const MAX_MACS: usize = 30_000;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// Uniform in `lo .. hi`.
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next() % (hi - lo) as u64) as usize
    }
}

#[allow(clippy::too_many_arguments)]
fn conv(
    c_in: usize,
    h: usize,
    w: usize,
    c_out: usize,
    k: [usize; 2],
    stride: [usize; 2],
    pads: [usize; 4],
    dilation: [usize; 2],
    groups: usize,
) -> Conv2dGeom {
    Conv2dGeom {
        c_in,
        h,
        w,
        c_out,
        kh: k[0],
        kw: k[1],
        stride,
        pads,
        dilation,
        groups,
    }
}

fn random_geom(r: &mut Rng) -> Conv2dGeom {
    if r.next().is_multiple_of(6) {
        return Conv2dGeom::linear(r.range(1, 700), r.range(1, 12));
    }
    let (groups, cig, kh, kw) = (r.range(1, 4), r.range(1, 13), r.range(1, 4), r.range(1, 4));
    let (s, p, d) = (r.range(1, 3), r.range(0, 3), r.range(1, 3));
    let (h, w, cog) = (r.range(1, 9), r.range(1, 9), r.range(1, 8));
    let dw = r.next().is_multiple_of(4);
    let (groups, c_in, c_out) = if dw {
        (cig, cig, cig)
    } else {
        (groups, cig * groups, cog * groups)
    };
    conv(
        c_in,
        h + kh * d,
        w + kw * d,
        c_out,
        [kh, kw],
        [s, 1 + (s % 2)],
        [p, p.min(1), (p + 1) % 3, p],
        [d, 1],
        groups,
    )
}

struct Case {
    g: Conv2dGeom,
    bits: Bits,
    packed: Vec<u8>,
    w8: Vec<i8>,
    x: Vec<i8>,
    rq: Vec<Requant>,
}

/// A random case; `w8` weights only `with_w8` (the heap is 48 KiB).
fn make_case(g: Conv2dGeom, bits: Bits, with_w8: bool, r: &mut Rng) -> Case {
    // Every bit pattern is a valid row of codes; random bytes also put
    // garbage in the unused bits of each row's last byte, which must not
    // matter.
    let packed = (0..g.c_out * bits.row_bytes(g.k()))
        .map(|_| r.next() as u8)
        .collect();
    let x = (0..g.in_len())
        .map(|_| match r.next() % 8 {
            0 => -128,
            1 => 127,
            _ => r.next() as i8,
        })
        .collect();
    let w8 = (0..if with_w8 { g.c_out * g.k() } else { 0 })
        .map(|_| match r.next() % 8 {
            0 => -128,
            _ => r.next() as i8,
        })
        .collect();
    // Gains from 1 to 2^-12, some negative, some with a ReLU clamp: low
    // and high accumulator bits both reach the output.
    let rq = (0..g.c_out)
        .map(|c| {
            let sign = if r.next().is_multiple_of(5) {
                -1.0
            } else {
                1.0
            };
            let gain = sign / (1u64 << ((c * 5 + r.range(0, 3)) % 13)) as f64;
            let lo = if r.next().is_multiple_of(3) { 0 } else { -128 };
            Requant::from_real(gain, (r.next() % 7) as f64 - 3.0, lo, 127)
        })
        .collect();
    Case {
        g,
        bits,
        packed,
        w8,
        x,
        rq,
    }
}

/// Every registered int8 kernel against scalar, whole and split at
/// `split` output channels; returns the number of mismatching runs.
fn check(c: &Case, split: usize) -> u32 {
    let g = &c.g;
    let plane = g.out_plane();
    let w = PackedRows::new(&c.packed, c.bits, g.c_out, g.k()).expect("packed size");
    let mut want_s = vec![0i8; g.out_len()];
    scalar::conv_shift_i8(g, &c.x, &w, 0, &c.rq, &mut want_s);
    let mut want_8 = vec![0i8; g.out_len()];
    scalar::conv_w8_i8(g, &c.x, &c.w8, 0, &c.rq, &mut want_8);
    let mut got = vec![0i8; g.out_len()];
    let mut bad = 0;
    let mut report = |name: &str, how: &str, got: &[i8], want: &[i8]| {
        if got != want {
            let i = got.iter().zip(want).position(|(a, b)| a != b).unwrap_or(0);
            println!(
                "MISMATCH {} ({}) b={} at {}: got {} want {}; {:?}",
                name,
                how,
                c.bits.get(),
                i,
                got[i],
                want[i],
                g
            );
            bad += 1;
        }
    };
    for k in dispatch::kernels().filter(|k| k.isa.available()) {
        let kw = g.k() * split;
        match k.f {
            KernelFn::ShiftI8(f) => {
                f(g, &c.x, &w, 0, &c.rq, &mut got);
                report(k.name, "whole", &got, &want_s);
                let (lo, hi) = got.split_at_mut(split * plane);
                f(g, &c.x, &w.sub_rows(0, split), 0, &c.rq[..split], lo);
                let rest = w.sub_rows(split, g.c_out - split);
                f(g, &c.x, &rest, split, &c.rq[split..], hi);
                report(k.name, "split", &got, &want_s);
            }
            KernelFn::W8I8(f) => {
                f(g, &c.x, &c.w8, 0, &c.rq, &mut got);
                report(k.name, "whole", &got, &want_8);
                let (lo, hi) = got.split_at_mut(split * plane);
                f(g, &c.x, &c.w8[..kw], 0, &c.rq[..split], lo);
                f(g, &c.x, &c.w8[kw..], split, &c.rq[split..], hi);
                report(k.name, "split", &got, &want_8);
            }
            _ => {}
        }
    }
    dispatch::conv_shift_i8(g, &c.x, &w, 0, &c.rq, &mut got);
    report("dispatch", "shift", &got, &want_s);
    dispatch::conv_w8_i8(g, &c.x, &c.w8, 0, &c.rq, &mut got);
    report("dispatch", "w8", &got, &want_8);
    bad
}

/// The Fashion-MNIST model's weighted layers (`shiftnn inspect`), int8
/// weights for the kept first conv and last linear layer.
fn fmnist_layers() -> [(&'static str, Conv2dGeom, bool); 10] {
    let c3 = |ci, hw, co, s| conv(ci, hw, hw, co, [3, 3], [s, s], [1; 4], [1, 1], 1);
    let c1 = |ci, hw, co, s| conv(ci, hw, hw, co, [1, 1], [s, s], [0; 4], [1, 1], 1);
    [
        ("stem (w8)", c3(1, 28, 16, 2), true),
        ("layer1.conv1", c3(16, 14, 16, 1), false),
        ("layer1.conv2", c3(16, 14, 16, 1), false),
        ("layer2.conv1", c3(16, 14, 32, 2), false),
        ("layer2.conv2", c3(32, 7, 32, 1), false),
        ("layer2.shortcut", c1(16, 14, 32, 2), false),
        ("layer3.conv1", c3(32, 7, 64, 2), false),
        ("layer3.conv2", c3(64, 4, 64, 1), false),
        ("layer3.shortcut", c1(32, 7, 64, 2), false),
        ("fc (w8)", Conv2dGeom::linear(64, 10), true),
    ]
}

/// The registered kernel `name` (the test has failed already if missing).
fn kernel(name: &str) -> KernelFn {
    match dispatch::kernels().find(|k| k.name == name) {
        Some(k) => k.f,
        None => {
            println!("FAIL: kernel {} is not registered", name);
            shiftnn_firmware::exit(1)
        }
    }
}

fn insns(per_tick_x1000: u64, f: impl FnOnce()) -> u64 {
    let t0 = shiftnn_firmware::ticks();
    f();
    (shiftnn_firmware::ticks() - t0) * per_tick_x1000 / 1000
}

#[entry]
fn main() -> ! {
    shiftnn_firmware::init();
    let per_tick = shiftnn_firmware::calibrate();
    println!("shiftnn kernel test on {}", shiftnn_firmware::TARGET);
    let mut failures = 0u32;
    let names: Vec<&str> = dispatch::kernels()
        .filter(|k| k.isa.available())
        .map(|k| k.name)
        .collect();
    println!("cpu level {:?}; kernels {:?}", dispatch::detected(), names);
    if dispatch::detected() != Isa::Dsp {
        println!("FAIL: no DSP level on this build (is cfg(shiftnn_dsp) set?)");
        failures += 1;
    }

    // Selection: the DSP kernels by default, the forced families honored.
    let g = conv(16, 14, 14, 16, [3, 3], [1, 1], [1; 4], [1, 1], 1);
    let want = [
        (None, "dsp/dot", "dsp/w8"),
        (Some(Family::Shift), "dsp/shift", "dsp/w8"),
        (Some(Family::Scalar), "scalar/shift-i8", "scalar/w8-i8"),
    ];
    for (fam, s, w8) in want {
        dispatch::set_family(fam);
        let got = (
            dispatch::kernel_name(Op::ShiftI8, &g),
            dispatch::kernel_name(Op::W8I8, &g),
        );
        if got != (s, w8) {
            println!(
                "FAIL: family {:?} selects {:?}, want {:?}",
                fam,
                got,
                (s, w8)
            );
            failures += 1;
        }
    }
    dispatch::set_family(None);

    let mut rng = Rng(0x5eed_c0de_2026_0004);
    // Edge cases of the driver: single-pixel tiles in two chunks (7x7,
    // 8 channels = 392 taps > 256), several chunks (k = 576, 2200), a
    // kernel too large to chunk (11x13: scalar fallback), a 1-pixel image,
    // strided 1x1, depthwise with dilation, the stem's shape.
    let fixed = [
        conv(30, 9, 9, 5, [7, 7], [1, 1], [1; 4], [1, 1], 1),
        conv(64, 4, 4, 19, [3, 3], [1, 1], [1; 4], [1, 1], 1),
        Conv2dGeom::linear(2200, 3),
        conv(8, 13, 13, 2, [11, 13], [1, 1], [0; 4], [1, 1], 1),
        conv(5, 1, 1, 3, [1, 1], [1, 1], [0; 4], [1, 1], 1),
        conv(33, 7, 7, 13, [1, 1], [2, 2], [0; 4], [1, 1], 1),
        conv(12, 9, 9, 12, [3, 3], [2, 1], [1, 0, 2, 1], [1, 2], 12),
        conv(3, 28, 28, 16, [3, 3], [2, 2], [1; 4], [1, 1], 1),
    ];
    let mut cases = 0;
    for g in fixed {
        assert!(g.validate().is_ok(), "{:?}", g);
        for bits in [Bits::B2, Bits::B3, Bits::B4] {
            let c = make_case(g, bits, true, &mut rng);
            failures += check(&c, g.c_out / 2);
            cases += 1;
        }
    }
    let mut n = 0;
    while n < CASES {
        let g = random_geom(&mut rng);
        if g.validate().is_err() || g.macs() > MAX_MACS {
            continue;
        }
        n += 1;
        for bits in [Bits::B2, Bits::B3, Bits::B4] {
            let c = make_case(g, bits, true, &mut rng);
            let split = rng.range(0, g.c_out + 1);
            failures += check(&c, split);
            cases += 1;
        }
    }
    println!(
        "{} cases (shape x bits), each on every kernel, whole and split",
        cases
    );

    // Instructions per call on the model's layer shapes (4-bit codes).
    println!("instructions per call (SysTick under -icount), Fashion-MNIST layer shapes, b = 4:");
    println!(
        "  {:<16} {:>8} {:>11} {:>11} {:>11}  {:>7}",
        "layer", "MACs", "scalar", "dsp/dot", "dsp/shift", "dot/MAC"
    );
    let mut tot = [0u64; 3];
    for (name, g, w8) in fmnist_layers() {
        let c = make_case(g, Bits::B4, w8, &mut rng);
        let w = PackedRows::new(&c.packed, c.bits, g.c_out, g.k()).expect("packed size");
        let mut outs = [
            vec![0i8; g.out_len()],
            vec![0i8; g.out_len()],
            vec![0i8; g.out_len()],
        ];
        let [o0, o1, o2] = &mut outs;
        let n = if w8 {
            let KernelFn::W8I8(f) = kernel("dsp/w8") else {
                unreachable!()
            };
            [
                insns(per_tick, || {
                    scalar::conv_w8_i8(&g, &c.x, &c.w8, 0, &c.rq, o0)
                }),
                insns(per_tick, || f(&g, &c.x, &c.w8, 0, &c.rq, o1)),
                insns(per_tick, || f(&g, &c.x, &c.w8, 0, &c.rq, o2)),
            ]
        } else {
            let (KernelFn::ShiftI8(dot), KernelFn::ShiftI8(shift)) =
                (kernel("dsp/dot"), kernel("dsp/shift"))
            else {
                unreachable!()
            };
            [
                insns(per_tick, || {
                    scalar::conv_shift_i8(&g, &c.x, &w, 0, &c.rq, o0)
                }),
                insns(per_tick, || dot(&g, &c.x, &w, 0, &c.rq, o1)),
                insns(per_tick, || shift(&g, &c.x, &w, 0, &c.rq, o2)),
            ]
        };
        if outs[1] != outs[0] || outs[2] != outs[0] {
            println!("MISMATCH on layer {}", name);
            failures += 1;
        }
        for (t, v) in tot.iter_mut().zip(n) {
            *t += v;
        }
        let per = n[1] * 100 / g.macs() as u64;
        println!(
            "  {:<16} {:>8} {:>11} {:>11} {:>11}  {:>4}.{:02}",
            name,
            g.macs(),
            n[0],
            n[1],
            n[2],
            per / 100,
            per % 100
        );
    }
    println!(
        "  {:<16} {:>8} {:>11} {:>11} {:>11}",
        "total", "", tot[0], tot[1], tot[2]
    );
    if failures == 0 {
        println!("kernel test: PASS");
        shiftnn_firmware::exit(0)
    } else {
        println!("kernel test: FAIL ({} problem(s))", failures);
        shiftnn_firmware::exit(1)
    }
}
