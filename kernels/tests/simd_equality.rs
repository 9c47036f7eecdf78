//! Every registered kernel against `scalar`, on every ISA level this CPU
//! (or qemu CPU) runs, for b = 2, 3, 4, on random shapes with odd channel
//! counts, `k` tails, padding, strides, dilations, groups and channel-range
//! splits.
//!
//! * int8 (`Op::ShiftI8`, and `Op::W8I8` with int8 weights that are -128
//!   or 127 one time in four): equality, bit for bit.
//! * float (`Op::ShiftF32`): each term `x * w` is exact (exponent add), so
//!   the only difference is the order of f32 additions. Any order of
//!   recursive/pairwise summation of `n` terms is within
//!   `(n - 1) * eps * sum |t_i|` of the exact sum (`eps = 2^-24`); the test
//!   checks `|got - exact| <= n * eps * sum |t_i| + MIN_POSITIVE` against
//!   an f64 computation, the bound `tests/float_bound.rs` uses for scalar.
//!   Pixels that read a subnormal, zero-exponent or huge activation take
//!   the exact scalar path: checked bit for bit with such inputs.
//! * f16 (`Op::ShiftF16`, `neonfp16/fexp` on aarch64 CPUs with FEAT_FP16):
//!   activations and pairs of terms are rounded to f16, so the bound is
//!   `(2^-10 + 2^-21 + n * 2^-23) * sum |t_i|`, plus the terms of
//!   activations below `2^-14` (flushed to zero); the exact path as above
//!   for activations of `2^8` and more (`shiftnn_kernels::aarch64::fp16`).

use proptest::prelude::*;
use shiftnn_kernels::codes::pack;
use shiftnn_kernels::dispatch::{self, Family, Isa, KernelFn, Op};
use shiftnn_kernels::gemm;
use shiftnn_kernels::lists;
use shiftnn_kernels::scalar::{self, Affine};
use shiftnn_kernels::{Bits, Conv2dGeom, PackedRows, Requant};

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn geom() -> impl Strategy<Value = Conv2dGeom> {
    (
        (
            1usize..4,
            1usize..40,
            1usize..9,
            1usize..9,
            1usize..4,
            1usize..4,
        ),
        (1usize..3, 0usize..3, 1usize..3, prop::bool::ANY, 1usize..8),
    )
        .prop_map(|((g, cig, h, w, kh, kw), (s, p, d, dw, cog))| {
            let (groups, c_in, c_out) = if dw {
                (cig, cig, cig)
            } else {
                (g, cig * g, cog * g)
            };
            Conv2dGeom {
                c_in,
                h: h + kh * d,
                w: w + kw * d,
                c_out,
                kh,
                kw,
                stride: [s, 1 + (s % 2)],
                pads: [p, p.min(1), (p + 1) % 3, p],
                dilation: [d, 1],
                groups,
            }
        })
        .prop_filter("valid", |g| g.validate().is_ok())
}

fn linear() -> impl Strategy<Value = Conv2dGeom> {
    (1usize..2200, 1usize..12).prop_map(|(k, n)| Conv2dGeom::linear(k, n))
}

struct Case {
    g: Conv2dGeom,
    bits: Bits,
    packed: Vec<u8>,
    codes: Vec<u8>,
    x: Vec<i8>,
    rq: Vec<Requant>,
}

fn case(g: Conv2dGeom, b: u32, seed: u64) -> Case {
    let bits = Bits::new(b).unwrap();
    let mut r = Rng(seed | 1);
    // Every third row crowds half its weights at the top exponent, as
    // trained linear layers do: at 4 bits such rows are decoded halved
    // for the GEMMs (`gemm::DecodedRows::shift`), the others mostly not.
    let top = bits.max_exp();
    let codes: Vec<u8> = (0..g.c_out * g.k())
        .map(|i| {
            let v = r.next();
            if (i / g.k()) % 3 == 1 && v.is_multiple_of(2) {
                bits.encode(v.is_multiple_of(4), top)
            } else {
                (v % (1 << b)) as u8
            }
        })
        .collect();
    let mut packed = vec![0u8; g.c_out * bits.row_bytes(g.k())];
    pack(&codes, bits, g.c_out, g.k(), &mut packed);
    // Garbage in the unused bits of each row's last byte must not matter.
    let rb = bits.row_bytes(g.k());
    let used = g.k() * b as usize % 8;
    if used != 0 {
        for row in 0..g.c_out {
            packed[row * rb + rb - 1] |= (0xffu16 << used) as u8 & (r.next() as u8);
        }
    }
    let x: Vec<i8> = (0..g.in_len())
        .map(|_| match r.next() % 8 {
            0 => -128,
            1 => 127,
            _ => r.next() as i8,
        })
        .collect();
    // Gains from 1 to 2^-12: low and high accumulator bits both matter
    // (and channels 12, 25, ... have a gain of 2.5).
    // Every seventh channel is negative, every fifth clamps at 0 (a fused
    // ReLU), every third at 100 (a fused ReLU6-like clip), and channel 11
    // has the largest shift and an offset at 2^62 (the saturating path of
    // `Requant::apply`).
    let rq: Vec<Requant> = (0..g.c_out)
        .map(|c| {
            let gain = 1.0 / (1u64 << (c * 5 % 13)) as f64;
            let gain = if c % 7 == 6 { -gain } else { gain };
            let lo = if c % 5 == 4 { 0 } else { -128 };
            let hi = if c % 3 == 2 { 100 } else { 127 };
            if c == 11 {
                return Requant::from_real(1e-15, 1e9, lo, hi);
            }
            if c % 13 == 12 {
                // A gain above 1 whose steps skip both -128 and 127: no
                // accumulator window, the epilogues' 64-bit clamp.
                return Requant::from_real(2.5, 0.25, lo, hi);
            }
            Requant::from_real(gain, (r.next() % 7) as f64 - 3.0, lo, hi)
        })
        .collect();
    Case {
        g,
        bits,
        packed,
        codes,
        x,
        rq,
    }
}

/// All int8 kernels this CPU runs, on the whole layer and on a split of
/// the channel range.
fn check_i8(c: &Case) -> Result<(), TestCaseError> {
    let g = &c.g;
    let w = PackedRows::new(&c.packed, c.bits, g.c_out, g.k()).unwrap();
    let mut want = vec![0i8; g.out_len()];
    scalar::conv_shift_i8(g, &c.x, &w, 0, &c.rq, &mut want);
    let plane = g.out_plane();
    let split = g.c_out / 2 + (g.c_out % 2);
    let mut ran = 0;
    for k in dispatch::kernels() {
        let KernelFn::ShiftI8(f) = k.f else { continue };
        if !k.isa.available() || !k.layers.fits(g) {
            continue;
        }
        ran += 1;
        let mut got = vec![0i8; g.out_len()];
        f(g, &c.x, &w, 0, &c.rq, &mut got);
        prop_assert_eq!(
            &got,
            &want,
            "kernel {} bits {:?} geom {:?}",
            k.name,
            c.bits,
            g
        );
        let (lo, hi) = got.split_at_mut(split * plane);
        f(g, &c.x, &w.sub_rows(0, split), 0, &c.rq[..split], lo);
        f(
            g,
            &c.x,
            &w.sub_rows(split, g.c_out - split),
            split,
            &c.rq[split..],
            hi,
        );
        prop_assert_eq!(
            &got,
            &want,
            "kernel {} (split) bits {:?} geom {:?}",
            k.name,
            c.bits,
            g
        );
    }
    prop_assert!(ran >= 1);
    let mut got = vec![0i8; g.out_len()];
    dispatch::conv_shift_i8(g, &c.x, &w, 0, &c.rq, &mut got);
    prop_assert_eq!(&got, &want, "dispatch bits {:?} geom {:?}", c.bits, g);
    check_decoded(c, &w, &want)
}

/// The codes decoded at load ([`gemm::decode`]) through every decoded-row
/// kernel this CPU runs, on any layer (not only those `gemm::applies`
/// picks), whole and split by channel range: equal to `scalar` on the
/// codes.
fn check_decoded(c: &Case, w: &PackedRows, want: &[i8]) -> Result<(), TestCaseError> {
    let g = &c.g;
    if g.k() > gemm::MAX_K {
        return Ok(());
    }
    // Code order for every kernel; tap-major, wherever the layer has one,
    // for the kernels that take it (whatever `direct_applies` would pick).
    let orders = [Some(gemm::Order::Codes), gemm::taps_order(g)];
    for order in orders.into_iter().flatten() {
        let (dw, corr, sh, at, fix) = decode_rows(w, order);
        let d = gemm::DecodedRows::new(&dw, &corr, &sh, &at, &fix, g.k(), order).unwrap();
        for k in dispatch::kernels() {
            let KernelFn::DecodedI8(f) = k.f else {
                continue;
            };
            let takes =
                (order == gemm::Order::Codes || k.takes_tap_major()) && g.k() <= k.layers.max_k();
            if k.isa.available() && takes {
                let name = format!("{} {order:?}", k.name);
                whole_and_split(c, want, &name, |oc0, n, o| {
                    f(g, &c.x, &d.sub_rows(oc0, n), oc0, &c.rq[oc0..oc0 + n], o)
                })?;
            }
        }
    }
    let (dw, corr, sh, at, fix) = decode_rows(w, gemm::Order::Codes);
    let d = gemm::DecodedRows::new(&dw, &corr, &sh, &at, &fix, g.k(), gemm::Order::Codes).unwrap();
    let mut got = vec![0i8; g.out_len()];
    dispatch::conv_decoded_i8(g, &c.x, &d, 0, &c.rq, &mut got);
    prop_assert_eq!(
        &got[..],
        want,
        "dispatch decoded bits {:?} geom {:?}",
        c.bits,
        g
    );
    check_lists(c, w, want)
}

/// The parts of decoded rows: weights, corrections, forms, fix index
/// and fixes ([`gemm::decode`]).
type Decoded = (Vec<i8>, Vec<i32>, Vec<u8>, Vec<u32>, Vec<gemm::Fix>);

/// `w` decoded in `order`: rows, corrections, forms, fix index and fixes.
fn decode_rows(w: &PackedRows, order: gemm::Order) -> Decoded {
    let n = w.rows();
    let (mut dw, mut corr) = (vec![0i8; n * order.kp(w.k())], vec![0i32; n]);
    let (mut sh, mut at) = (vec![0u8; n], vec![0u32; n + 1]);
    let mut fix = vec![gemm::Fix::default(); gemm::fix_count(w, order)];
    gemm::decode(w, order, &mut dw, &mut corr, &mut sh, &mut at, &mut fix);
    (dw, corr, sh, at, fix)
}

/// `run(oc0, n, out)` computes channels `oc0 .. oc0 + n` of `c`'s layer
/// into `out`: the whole layer, then the layer split in two channel
/// ranges, must equal `want`.
fn whole_and_split(
    c: &Case,
    want: &[i8],
    name: &str,
    run: impl Fn(usize, usize, &mut [i8]),
) -> Result<(), TestCaseError> {
    let (g, n) = (&c.g, c.g.c_out);
    let split = n / 2 + (n % 2);
    let mut got = vec![0i8; g.out_len()];
    run(0, n, &mut got);
    prop_assert_eq!(
        &got[..],
        want,
        "kernel {} bits {:?} geom {:?}",
        name,
        c.bits,
        g
    );
    let (lo, hi) = got.split_at_mut(split * g.out_plane());
    run(0, split, lo);
    run(split, n - split, hi);
    prop_assert_eq!(
        &got[..],
        want,
        "kernel {} (split) bits {:?} geom {:?}",
        name,
        c.bits,
        g
    );
    Ok(())
}

/// The codes regrouped by exponent at load ([`lists::decode`]) through
/// every exponent-list kernel this CPU runs, on any layer up to its `k`
/// limit, whole and split by channel range: equal to `scalar`.
fn check_lists(c: &Case, w: &PackedRows, want: &[i8]) -> Result<(), TestCaseError> {
    let g = &c.g;
    if g.k() > lists::MAX_K {
        return Ok(());
    }
    let n = g.c_out;
    let (mut idx, mut at) = (vec![0u16; n * g.k()], vec![0u32; lists::offsets_len(w)]);
    lists::decode(w, &mut idx, &mut at);
    let l = lists::ExpLists::new(&idx, &at, n, g.k(), c.bits).unwrap();
    for k in dispatch::kernels() {
        let KernelFn::ListsI8(f) = k.f else { continue };
        if k.isa.available() {
            whole_and_split(c, want, k.name, |oc0, n, o| {
                f(g, &c.x, &l.sub_rows(oc0, n), oc0, &c.rq[oc0..oc0 + n], o)
            })?;
        }
    }
    Ok(())
}

/// The unregistered FMA baselines of the `fexp` benchmarks (the tiled
/// kernel's and the pixel-lane GEMM's), where this CPU runs them, on any
/// layer: they must compute the same layer, or the comparison means
/// nothing.
fn fma_baseline() -> Vec<(&'static str, dispatch::F32Fn)> {
    #[cfg(target_arch = "x86_64")]
    if Isa::Avx512.available() {
        return vec![
            (
                "avx512/fma-baseline",
                shiftnn_kernels::x86_64::avx512::conv_fma_f32,
            ),
            (
                "avx512/gemm-fma-baseline",
                shiftnn_kernels::x86_64::gemm_fexp::conv_gemm_fma_f32,
            ),
        ];
    }
    Vec::new()
}

/// Every float kernel this CPU runs on `g` (the registered f32 and f16
/// ones that fit it, and the FMA baselines), with whether it computes in
/// f16.
fn float_kernels(g: &Conv2dGeom) -> Vec<(&'static str, dispatch::F32Fn, bool)> {
    dispatch::kernels()
        .filter(|k| k.isa != Isa::Scalar && k.available() && k.layers.fits(g))
        .filter_map(|k| match k.f {
            KernelFn::ShiftF32(f) => Some((k.name, f, false)),
            KernelFn::ShiftF16(f) => Some((k.name, f, true)),
            _ => None,
        })
        .chain(fma_baseline().into_iter().map(|(n, f)| (n, f, false)))
        .collect()
}

/// The `(activation, weight)` terms of output `(oc, oy, ox)`.
fn float_terms(c: &Case, xf: &[f32], oc: usize, oy: usize, ox: usize) -> Vec<(f32, i32)> {
    let mut terms = Vec::new();
    c.g.for_each_tap(oc, oy, ox, |xi, ki| {
        terms.push((xf[xi], c.bits.value(c.codes[oc * c.g.k() + ki])));
    });
    terms
}

/// All float kernels against the exact sum, within the stated bounds.
fn check_f32(c: &Case, xf: &[f32]) -> Result<(), TestCaseError> {
    let g = &c.g;
    let w = PackedRows::new(&c.packed, c.bits, g.c_out, g.k()).unwrap();
    let ep = vec![Affine::IDENTITY; g.c_out];
    let mut want = vec![0f32; g.out_len()];
    scalar::conv_shift_f32(g, xf, &w, 0, &ep, &mut want);
    for (name, f, f16) in float_kernels(g) {
        let mut got = vec![0f32; g.out_len()];
        f(g, xf, &w, 0, &ep, &mut got);
        for oc in 0..g.c_out {
            for oy in 0..g.out_h() {
                for ox in 0..g.out_w() {
                    let i = (oc * g.out_h() + oy) * g.out_w() + ox;
                    let terms = float_terms(c, xf, oc, oy, ox);
                    check_float_out(got[i], want[i], &terms, f16, || {
                        format!("kernel {name} oc {oc} px {:?}", (oy, ox))
                    })?;
                }
            }
        }
    }
    Ok(())
}

/// `c` without activations of -128 (they become -127; 127 stays one time
/// in eight): the patches on which `dot` drops its correction sum and
/// applies signs with `vpsignb`.
fn no_min(mut c: Case) -> Case {
    for v in &mut c.x {
        *v = (*v).max(-127);
    }
    c
}

/// Random int8 weights for `c`'s geometry, extremes one time in four.
fn w8_weights(c: &Case, seed: u64) -> Vec<i8> {
    let mut r = Rng(seed | 1);
    (0..c.g.c_out * c.g.k())
        .map(|_| match r.next() % 8 {
            0 => -128,
            1 => 127,
            _ => r.next() as i8,
        })
        .collect()
}

/// All int8-weight kernels this CPU runs against `scalar::conv_w8_i8`,
/// whole and split by channel range.
fn check_w8(c: &Case, w: &[i8]) -> Result<(), TestCaseError> {
    let g = &c.g;
    let k = g.k();
    let mut want = vec![0i8; g.out_len()];
    scalar::conv_w8_i8(g, &c.x, w, 0, &c.rq, &mut want);
    let split = g.c_out / 2;
    let plane = g.out_plane();
    for kern in dispatch::kernels() {
        let KernelFn::W8I8(f) = kern.f else { continue };
        if !kern.isa.available() || !kern.layers.fits(g) {
            continue;
        }
        let mut got = vec![0i8; g.out_len()];
        f(g, &c.x, w, 0, &c.rq, &mut got);
        prop_assert_eq!(&got, &want, "kernel {} geom {:?}", kern.name, g);
        let (lo, hi) = got.split_at_mut(split * plane);
        f(g, &c.x, &w[..split * k], 0, &c.rq[..split], lo);
        f(g, &c.x, &w[split * k..], split, &c.rq[split..], hi);
        prop_assert_eq!(&got, &want, "kernel {} (split) geom {:?}", kern.name, g);
    }
    let mut got = vec![0i8; g.out_len()];
    dispatch::conv_w8_i8(g, &c.x, w, 0, &c.rq, &mut got);
    prop_assert_eq!(&got, &want, "dispatch w8 geom {:?}", g);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn w8_conv_kernels_equal_scalar(g in geom(), seed in any::<u64>()) {
        let c = case(g, 4, seed);
        check_w8(&c, &w8_weights(&c, seed ^ 0x1234))?;
    }

    #[test]
    fn w8_linear_kernels_equal_scalar(g in linear(), seed in any::<u64>()) {
        let c = case(g, 4, seed);
        check_w8(&c, &w8_weights(&c, seed ^ 0x4321))?;
    }

    #[test]
    fn int8_conv_kernels_equal_scalar(g in geom(), b in 2u32..5, seed in any::<u64>()) {
        check_i8(&case(g, b, seed))?;
    }

    #[test]
    fn int8_linear_kernels_equal_scalar(g in linear(), b in 2u32..5, seed in any::<u64>()) {
        check_i8(&case(g, b, seed))?;
    }

    #[test]
    fn int8_no_min_linear_kernels_equal_scalar(g in linear(), b in 2u32..5, seed in any::<u64>()) {
        check_i8(&no_min(case(g, b, seed)))?;
    }

    #[test]
    fn int8_no_min_conv_kernels_equal_scalar(g in geom(), b in 2u32..5, seed in any::<u64>()) {
        check_i8(&no_min(case(g, b, seed)))?;
    }

    #[test]
    fn w8_no_min_linear_kernels_equal_scalar(g in linear(), seed in any::<u64>()) {
        let c = no_min(case(g, 4, seed));
        check_w8(&c, &w8_weights(&c, seed ^ 0x4321))?;
    }

    #[test]
    fn float_conv_kernels_within_bound(g in geom(), b in 2u32..5, seed in any::<u64>()) {
        let c = case(g, b, seed);
        let mut r = Rng(seed ^ 0x5555);
        let xf: Vec<f32> = c.x.iter().map(|&v| match r.next() % 6 {
            0 => 0.0,
            1 => -0.0,
            // Below f16's normal range, for the f16 kernels' flush.
            2 if r.next().is_multiple_of(4) => (r.next() % 1000) as f32 * 1e-7,
            _ => v as f32 / 16.0 + (r.next() % 1000) as f32 * 1e-4,
        }).collect();
        check_f32(&c, &xf)?;
    }

    #[test]
    fn float_linear_kernels_within_bound(g in linear(), b in 2u32..5, seed in any::<u64>()) {
        let c = case(g, b, seed);
        let xf: Vec<f32> = c.x.iter().map(|&v| v as f32 * 0.37).collect();
        check_f32(&c, &xf)?;
    }
}

/// `k` longer than every kernel's chunk (multi-chunk accumulation), odd
/// row count, all b.
#[test]
fn long_k_multi_chunk() {
    for b in 2..=4 {
        for k in [4095usize, 4096, 4097, 9001] {
            check_i8(&case(Conv2dGeom::linear(k, 5), b, 77 + k as u64)).unwrap();
            check_i8(&no_min(case(Conv2dGeom::linear(k, 9), b, 7 + k as u64))).unwrap();
            let c = case(Conv2dGeom::linear(k, 3), b, 99 + k as u64);
            let xf: Vec<f32> = c.x.iter().map(|&v| v as f32 / 8.0).collect();
            check_f32(&c, &xf).unwrap();
        }
        // A conv whose patch needs several chunks, with padding.
        let g = Conv2dGeom {
            c_in: 300,
            h: 3,
            w: 4,
            c_out: 3,
            kh: 3,
            kw: 3,
            stride: [1, 1],
            pads: [1; 4],
            dilation: [1, 1],
            groups: 1,
        };
        check_i8(&case(g, b, 5)).unwrap();
    }
}

/// b = 4 weights of ±128 with activations of -128, -127 and 127: the
/// extremes of every term and pair sum. 3 rows take the single-row path of
/// `dot`, 6 rows a block of 4 and a tail.
#[test]
fn extreme_codes_and_activations() {
    for (k, n) in [1usize, 31, 32, 33, 64, 100, 1000]
        .into_iter()
        .flat_map(|k| [(k, 3usize), (k, 6)])
    {
        for (code, xv) in [
            (0b0111u8, -128i8),
            (0b1111, -128),
            (0b0111, -127),
            (0b1111, -127),
            (0b0111, 127),
            (0b1111, 127),
        ] {
            let g = Conv2dGeom::linear(k, n);
            let bits = Bits::B4;
            let codes = vec![code; n * k];
            let mut packed = vec![0u8; n * bits.row_bytes(k)];
            pack(&codes, bits, n, k, &mut packed);
            let x = vec![xv; k];
            let rq = vec![Requant::from_real(1.0 / 16384.0 / k as f64 * 100.0, 0.0, -128, 127); n];
            let c = Case {
                g,
                bits,
                packed,
                codes,
                x,
                rq,
            };
            check_i8(&c).unwrap();
        }
    }
}

/// Linear layers around `dot`'s blocks: row counts around its 4-row block,
/// `k` around its 64-code step (partial last byte, partial last step), all
/// b, with and without -128 in the input; and a -128 in only one chunk of
/// a long row, so the chunks of one call take different paths.
#[test]
fn gemv_row_blocks_and_tails() {
    for b in 2..=4 {
        for n in 1..=9 {
            for k in [1usize, 2, 3, 63, 64, 65, 127, 128, 129, 200] {
                let seed = (b as u64) << 32 | (n as u64) << 16 | k as u64;
                check_i8(&case(Conv2dGeom::linear(k, n), b, seed)).unwrap();
                check_i8(&no_min(case(Conv2dGeom::linear(k, n), b, seed))).unwrap();
            }
        }
        for at in [0usize, 4095, 4096, 8191, 8999] {
            let mut c = no_min(case(Conv2dGeom::linear(9000, 6), b, at as u64));
            c.x[at] = -128;
            check_i8(&c).unwrap();
        }
    }
}

/// Int8 weights and activations at the extremes everywhere: every
/// `vpmaddubsw` pair sum at its limit (-128 * -128 twice is 32768, which
/// saturates i16 if computed naively), long rows so i32 sums grow.
#[test]
fn w8_extremes() {
    for k in [1usize, 2, 31, 32, 33, 64, 100, 1000, 4099] {
        for (wv, xv) in [
            (-128i8, -128i8),
            (-128, 127),
            (127, -128),
            (127, 127),
            (-128, -127),
            (127, -127),
        ] {
            let g = Conv2dGeom::linear(k, 3);
            let mut c = case(g, 4, k as u64);
            c.x = vec![xv; k];
            c.rq = vec![Requant::from_real(1.0 / 16384.0 / k as f64 * 100.0, 0.0, -128, 127); 3];
            check_w8(&c, &vec![wv; 3 * k]).unwrap();
            // Alternating signs: pair sums of opposite sign terms.
            let alt: Vec<i8> = (0..3 * k)
                .map(|i| if i % 2 == 0 { wv } else { -128 })
                .collect();
            check_w8(&c, &alt).unwrap();
        }
    }
}

/// Every level this CPU runs, capped in turn (`set_isa_cap`, what
/// `SHIFTNN_ISA` sets), times every forced family: the dispatching entry
/// points still equal `scalar`. The settings are process-wide; other tests
/// running meanwhile only see another correct kernel.
#[test]
fn every_level_and_family_through_dispatch() {
    let shapes = [
        Conv2dGeom::linear(333, 19),
        Conv2dGeom {
            c_in: 6,
            h: 9,
            w: 7,
            c_out: 21,
            kh: 3,
            kw: 3,
            stride: [2, 1],
            pads: [1, 1, 0, 1],
            dilation: [1, 1],
            groups: 3,
        },
    ];
    for isa in Isa::ALL.into_iter().filter(|i| i.available()) {
        for fam in Family::ALL.into_iter().map(Some).chain([None]) {
            dispatch::set_isa_cap(Some(isa));
            dispatch::set_family(fam);
            for (si, g) in shapes.iter().enumerate() {
                for b in 2..=4 {
                    let c = case(*g, b, 7 + si as u64 * 3 + b as u64);
                    check_i8(&c).unwrap();
                    check_w8(&c, &w8_weights(&c, 99)).unwrap();
                }
            }
        }
    }
    dispatch::set_isa_cap(None);
    dispatch::set_family(None);
}

/// Edge-case float activations (zeros, subnormals, huge, inf, NaN): their
/// pixels take the exact path and equal `scalar` bit for bit; NaN stays NaN.
#[test]
fn float_edge_activations() {
    let specials = [
        0.0f32,
        -0.0,
        f32::from_bits(1),
        -f32::from_bits(0x0040_0000),
        f32::MIN_POSITIVE,
        1.0e38,
        -3.0e38,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
    ];
    let g = Conv2dGeom {
        c_in: 5,
        h: 6,
        w: 7,
        c_out: 7,
        kh: 3,
        kw: 3,
        stride: [1, 1],
        pads: [1; 4],
        dilation: [1, 1],
        groups: 1,
    };
    for (si, &s) in specials.iter().enumerate() {
        for b in 2..=4 {
            let c = case(g, b, 1234 + si as u64);
            let w = PackedRows::new(&c.packed, c.bits, g.c_out, g.k()).unwrap();
            let mut xf: Vec<f32> = c.x.iter().map(|&v| v as f32 / 4.0).collect();
            // One special value in the middle of the image, one at a corner.
            xf[2 * 42 + 3 * 7 + 3] = s;
            xf[0] = s;
            let ep = vec![Affine::IDENTITY; g.c_out];
            let mut want = vec![0f32; g.out_len()];
            scalar::conv_shift_f32(&g, &xf, &w, 0, &ep, &mut want);
            for (name, f, f16) in float_kernels(&g) {
                let mut got = vec![0f32; g.out_len()];
                f(&g, &xf, &w, 0, &ep, &mut got);
                // Outputs reading the special value are exact; the others
                // are within the bound.
                for oc in 0..g.c_out {
                    for oy in 0..g.out_h() {
                        for ox in 0..g.out_w() {
                            let i = (oc * g.out_h() + oy) * g.out_w() + ox;
                            let terms = float_terms(&c, &xf, oc, oy, ox);
                            check_float_out(got[i], want[i], &terms, f16, || {
                                format!("kernel {name} special {s:e} b {b} out {i}")
                            })
                            .unwrap();
                        }
                    }
                }
            }
        }
    }
}

/// The registry lists every op's scalar reference, names are unique, and
/// this CPU's best level has a kernel of each SIMD family it claims.
#[test]
fn registry_is_consistent() {
    let names: Vec<&str> = dispatch::kernels().map(|k| k.name).collect();
    let mut sorted = names.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), names.len(), "duplicate kernel names");
    for op in [
        Op::ShiftI8,
        Op::ShiftF32,
        Op::ShiftF16,
        Op::W8I8,
        Op::F32,
        Op::DecodedI8,
        Op::ListsI8,
    ] {
        assert!(dispatch::kernels().any(|k| k.op() == op && k.isa == Isa::Scalar));
    }
    // A SIMD kernel's name ends with its family (`avx512/gemm-dot`,
    // `neon/shift`), which `inspect`, `bench` and benches/peers rely on;
    // int8-weight kernels are named `w8`.
    for k in dispatch::kernels().filter(|k| k.isa != Isa::Scalar && k.op() != Op::W8I8) {
        let fam = k.name.rsplit(['/', '-']).next().unwrap();
        assert_eq!(fam, k.family.name(), "kernel {}", k.name);
    }
    eprintln!("cpu level {:?}; kernels: {names:?}", dispatch::detected());
}

/// Depthwise layers wider than the depthwise kernels' row chunk (256
/// outputs), with strides, padding and dilation: the chunk seams and the
/// column bounds of every tap.
#[test]
fn wide_depthwise_rows() {
    let mut seed = 7u64;
    for (w, s, p, d, k) in [
        (600, 1, 1, 1, 3),
        (515, 2, 2, 1, 5),
        (300, 3, 0, 2, 3),
        (257, 1, 3, 1, 7),
    ] {
        for b in 2..5 {
            let g = Conv2dGeom {
                c_in: 5,
                h: 4 + k,
                w,
                c_out: 5,
                kh: k,
                kw: k,
                stride: [s, s],
                pads: [p, p, p, p],
                dilation: [d, d],
                groups: 5,
            };
            seed += 1;
            check_i8(&case(g, b, seed)).unwrap();
        }
    }
}

/// Depthwise 7x7 layers whose 49 taps all have the same extreme code, on
/// constant extreme activations: one accumulator bucket of the depthwise
/// kernels takes every tap, past the 31 an `i16` holds (it must widen in
/// between), and the requantizer's gain is small enough that an overflow
/// would show in the output.
#[test]
fn depthwise_taps_of_one_extreme_code() {
    let g = Conv2dGeom {
        c_in: 3,
        h: 9,
        w: 70,
        c_out: 3,
        kh: 7,
        kw: 7,
        stride: [1, 1],
        pads: [3, 3, 3, 3],
        dilation: [1, 1],
        groups: 3,
    };
    for code in [3u8, 7, 11, 15] {
        for xv in [-128i8, 127] {
            let mut c = case(g, 4, code as u64);
            c.codes = vec![code; g.c_out * g.k()];
            c.packed = vec![0u8; g.c_out * c.bits.row_bytes(g.k())];
            pack(&c.codes, c.bits, g.c_out, g.k(), &mut c.packed);
            c.x = vec![xv; g.in_len()];
            c.rq = vec![Requant::from_real(1.0 / 65536.0, 0.0, -128, 127); g.c_out];
            check_i8(&c).unwrap();
        }
    }
}

/// A pointwise (1x1, stride 1, unpadded) layer on an `h x w` map.
fn pointwise_geom(c_in: usize, c_out: usize, h: usize, w: usize) -> Conv2dGeom {
    Conv2dGeom {
        h,
        w,
        ..Conv2dGeom::linear(c_in, c_out)
    }
}

/// A 3x3 "same" convolution (stride 1, padding 1) on an `hw` x `hw` map.
fn same3x3(c_in: usize, hw: usize, c_out: usize) -> Conv2dGeom {
    Conv2dGeom {
        kh: 3,
        kw: 3,
        pads: [1; 4],
        ..pointwise_geom(c_in, c_out, hw, hw)
    }
}

fn pointwise() -> impl Strategy<Value = Conv2dGeom> {
    (1usize..100, 1usize..40, 8usize..20, 8usize..20)
        .prop_map(|(c_in, c_out, h, w)| pointwise_geom(c_in, c_out, h, w))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    /// Pointwise layers (the pixel-lane kernels' own layout): odd channel
    /// counts, pixel tails, -128 and 127 activations, every code width.
    #[test]
    fn pointwise_kernels_equal_scalar(g in pointwise(), b in 2u32..5, seed in any::<u64>()) {
        prop_assert!(shiftnn_kernels::pointwise::applies(&g));
        check_i8(&case(g, b, seed))?;
    }
}

/// Pointwise layers at the kernels' limits: `k` = `MAX_K`, more rows than
/// one weight-table block, a plane just at `MIN_PLANE`, the widest small
/// map and a large odd one.
#[test]
fn pointwise_limits() {
    use shiftnn_kernels::pointwise::{applies, MAX_K, MAX_K_SMALL_MAP, MIN_PLANE};
    let mut seed = 11u64;
    for (c_in, c_out, h, w) in [
        (MAX_K, 19, 8, 9),
        (MAX_K - 1, 40, 3, 23),
        (16, 300, 1, MIN_PLANE),
        (MAX_K_SMALL_MAP, 33, 7, 7),
        (3, 5, 37, 41),
    ] {
        let g = pointwise_geom(c_in, c_out, h, w);
        assert!(applies(&g), "{g:?}");
        for b in 2..5 {
            seed += 1;
            check_i8(&case(g, b, seed)).unwrap();
        }
    }
}

fn small_k_conv() -> impl Strategy<Value = Conv2dGeom> {
    (
        (1usize..9, 1usize..8, 1usize..8, 1usize..40),
        (1usize..4, 0usize..4, 1usize..3, 8usize..40, 8usize..40),
    )
        .prop_map(|((c_in, kh, kw, c_out), (s, p, d, h, w))| Conv2dGeom {
            c_in,
            h: h + kh * d,
            w: w + kw * d,
            c_out,
            kh,
            kw,
            stride: [s, 1 + s % 2],
            pads: [p, p / 2, (p + 1) % 4, p],
            dilation: [d, 1],
            groups: 1,
        })
        .prop_filter("a small-k layer", |g| {
            g.validate().is_ok() && shiftnn_kernels::pointwise::small_k(g)
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    /// Stem-like convs (few input channels, any kernel size, strides,
    /// padding, dilation) for the pixel-lane kernel's tap gather.
    #[test]
    fn small_k_kernels_equal_scalar(g in small_k_conv(), b in 2u32..5, seed in any::<u64>()) {
        check_i8(&case(g, b, seed))?;
    }
}

/// Dilated kernels taller than the input (`kh * d > h`, but interior
/// pixels still exist thanks to padding): the gather's channel stepping
/// once underflowed here (caught by a debug build).
#[test]
fn dilated_kernels_taller_than_the_input() {
    let mut seed = 23u64;
    for (h, kh, d, p) in [(3, 2, 2, 1), (4, 3, 2, 2), (5, 2, 4, 0), (2, 2, 1, 1)] {
        let g = Conv2dGeom {
            c_in: 4,
            h,
            w: 13,
            c_out: 6,
            kh,
            kw: 3,
            stride: [1, 1],
            pads: [p, 1, p, 1],
            dilation: [d, 1],
            groups: 1,
        };
        assert!(g.validate().is_ok(), "{g:?}");
        for b in 2..5 {
            seed += 1;
            check_i8(&case(g, b, seed)).unwrap();
        }
    }
}

/// Layers of the shapes the pixel-lane GEMM blocks over: planes of one to
/// several 64-pixel blocks and a ragged tail, output rows shorter and
/// longer than a block, strides 1-3, dilation, padding, groups, row counts
/// around its 6/8/12-row blocks.
fn gemm_conv() -> impl Strategy<Value = Conv2dGeom> {
    (
        (
            1usize..3,
            1usize..24,
            1usize..30,
            1usize..30,
            1usize..4,
            1usize..4,
        ),
        (1usize..4, 0usize..3, 1usize..3, 1usize..27),
    )
        .prop_map(|((groups, cig, h, w, kh, kw), (s, p, d, cog))| Conv2dGeom {
            c_in: cig * groups,
            h: h + kh * d,
            w: w + kw * d,
            c_out: cog * groups,
            kh,
            kw,
            stride: [s, 1 + (s + h) % 3],
            pads: [p, (p + 1) % 3, p.min(1), p],
            dilation: [d, 1 + (w % 2)],
            groups,
        })
        .prop_filter("valid", |g| g.validate().is_ok())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn gemm_shaped_convs_equal_scalar(g in gemm_conv(), b in 2u32..5, seed in any::<u64>()) {
        check_i8(&case(g, b, seed))?;
    }
}

/// True for an activation the `fexp` kernels take on their fast path:
/// zero, or normal with a biased exponent of at most 247 (`* 2^7` stays
/// normal).
fn fexp_fast(v: f32) -> bool {
    let e = (v.to_bits() >> 23) & 0xff;
    v == 0.0 || (1..=247).contains(&e)
}

/// Every float kernel this CPU runs on `g` (the registered ones that fit
/// it and the FMA baselines), whole and split by channel range: outputs
/// whose patch reads an activation off the fast path equal `scalar` bit
/// for bit (NaN: NaN); the others are within the summation bound.
fn check_f32_edges(c: &Case, xf: &[f32]) -> Result<usize, TestCaseError> {
    let g = &c.g;
    let w = PackedRows::new(&c.packed, c.bits, g.c_out, g.k()).unwrap();
    let ep = vec![Affine::IDENTITY; g.c_out];
    let mut want = vec![0f32; g.out_len()];
    scalar::conv_shift_f32(g, xf, &w, 0, &ep, &mut want);
    let plane = g.out_plane();
    let split = g.c_out / 2 + (g.c_out % 2);
    let kernels = float_kernels(g);
    for &(name, f, f16) in &kernels {
        let mut whole = vec![0f32; g.out_len()];
        f(g, xf, &w, 0, &ep, &mut whole);
        let mut parts = vec![0f32; g.out_len()];
        let (lo, hi) = parts.split_at_mut(split * plane);
        f(g, xf, &w.sub_rows(0, split), 0, &ep[..split], lo);
        let rest = g.c_out - split;
        f(g, xf, &w.sub_rows(split, rest), split, &ep[split..], hi);
        for (got, how) in [(&whole, "whole"), (&parts, "split")] {
            for oc in 0..g.c_out {
                for oy in 0..g.out_h() {
                    for ox in 0..g.out_w() {
                        let terms = float_terms(c, xf, oc, oy, ox);
                        let i = (oc * g.out_h() + oy) * g.out_w() + ox;
                        check_float_out(got[i], want[i], &terms, f16, || {
                            format!("kernel {name} ({how}) oc {oc} px {:?} geom {g:?}", (oy, ox))
                        })?;
                    }
                }
            }
        }
    }
    Ok(kernels.len())
}

/// True for an activation the f16 kernels take on their fast path: zero,
/// or an f32 normal whose f16 rounding is below `2^8` (biased exponent at
/// most 22; those below f16's normal range are flushed to zero).
fn fexp16_fast(v: f32) -> bool {
    let e32 = (v.to_bits() >> 23) & 0xff;
    let e16 = (half::f16::from_f32(v).to_bits() >> 10) & 0x1f;
    v == 0.0 || (e32 != 0 && e32 != 0xff && e16 <= 22)
}

/// One float output `got` of a kernel (f16 arithmetic if `f16`) whose
/// terms are `(activation, weight)`: within the kernel's bound of their
/// exact sum if every activation takes the fast path, else bit for bit
/// the reference's `want` (NaN: NaN); `what` names the output in a
/// failure.
fn check_float_out(
    got: f32,
    want: f32,
    terms: &[(f32, i32)],
    f16: bool,
    what: impl Fn() -> String,
) -> Result<(), TestCaseError> {
    let fast = if f16 { fexp16_fast } else { fexp_fast };
    if terms.iter().all(|&(x, _)| fast(x)) {
        let exact: f64 = terms.iter().map(|&(x, w)| x as f64 * w as f64).sum();
        let abs: f64 = terms
            .iter()
            .map(|&(x, w)| (x as f64 * w as f64).abs())
            .sum();
        let n = terms.len() as f64;
        let bound = if f16 {
            // Rounding to f16 and the pair sums (2^-10 + 2^-21), the f32
            // sums after them, and the flushed terms in full.
            let flushed: f64 = terms
                .iter()
                .filter(|&&(x, _)| x.abs() < 2f32.powi(-14))
                .map(|&(x, w)| (x as f64 * w as f64).abs())
                .sum();
            (2f64.powi(-10) + 2f64.powi(-21) + n * 2f64.powi(-23)) * abs + flushed
        } else {
            n * (f32::EPSILON as f64 / 2.0) * abs
        } + f64::MIN_POSITIVE;
        prop_assert!(
            (got as f64 - exact).abs() <= bound,
            "{}: got {} exact {} bound {}",
            what(),
            got,
            exact,
            bound
        );
    } else {
        prop_assert!(
            got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
            "{} (exact path): got {:e} want {:e}",
            what(),
            got,
            want
        );
    }
    Ok(())
}

/// Float activations for `c`: zeros of both signs one time in six, and,
/// when `edges`, about one in 1500 off the fast path (subnormals, values
/// too large for `* 2^7`, infinities, NaN).
fn float_acts(c: &Case, seed: u64, edges: bool) -> Vec<f32> {
    let specials = [
        f32::from_bits(1),
        -f32::from_bits(0x0040_0000),
        1.0e37,
        -3.0e38,
        f32::INFINITY,
        f32::NAN,
    ];
    let mut r = Rng(seed ^ 0x5a5a);
    c.x.iter()
        .map(|&v| match r.next() % 6 {
            0 => 0.0,
            1 => -0.0,
            _ if edges && r.next().is_multiple_of(1500) => specials[(r.next() % 6) as usize],
            _ => v as f32 / 16.0 + (r.next() % 1000) as f32 * 1e-4,
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// The float kernels on the GEMM's shapes (`avx512/gemm-fexp` where
    /// this CPU runs it): planes of one to several 64-pixel blocks and
    /// tails, strides 1-3, padding, dilation, groups, odd channel counts,
    /// zeros and, in half the cases, activations off the fast path.
    #[test]
    fn float_gemm_shaped_convs_within_bound(
        g in gemm_conv(),
        b in 2u32..5,
        seed in any::<u64>(),
        edges in any::<bool>(),
    ) {
        let c = case(g, b, seed);
        let xf = float_acts(&c, seed, edges);
        check_f32_edges(&c, &xf)?;
    }
}

/// The float GEMM's panel widths (64, 48, 32 and 16 pixels per block as
/// `k` grows, and the tiled kernel beyond its panel), kernels wider or
/// taller than the tap tables, strides 1-3, with edge activations.
#[test]
fn float_gemm_long_k_and_wide_kernels() {
    let geo = |c_in, h, w, kh, kw, sx| Conv2dGeom {
        c_in,
        h,
        w,
        c_out: 7,
        kh,
        kw,
        stride: [1, sx],
        pads: [kh / 2, kw / 2, kh / 2, 1],
        dilation: [1, 1],
        groups: 1,
    };
    let shapes = [
        geo(130, 9, 9, 3, 3, 1),
        geo(200, 9, 9, 3, 3, 2),
        geo(300, 9, 9, 3, 3, 1),
        geo(450, 8, 9, 3, 3, 1),
        geo(520, 9, 9, 3, 3, 1),
        geo(5, 20, 40, 1, 17, 1),
        geo(5, 20, 40, 17, 1, 2),
        geo(5, 20, 40, 1, 18, 3),
        geo(5, 20, 40, 3, 3, 3),
    ];
    for (si, g) in shapes.into_iter().enumerate() {
        for b in 2..=4 {
            let c = case(g, b, (si * 10 + b as usize) as u64);
            let xf = float_acts(&c, si as u64, si % 2 == 0);
            assert!(check_f32_edges(&c, &xf).unwrap() >= 1);
        }
    }
}

/// `k` large enough for every panel width of the GEMM (64, 48, 32 and 16
/// pixels per block), up to its `MAX_K`, with 4-bit extremes.
#[test]
fn gemm_long_k_panels() {
    for (c_in, kh) in [
        (512usize, 3usize),
        (1100, 3),
        (1600, 3),
        (2040, 3),
        (2048, 1),
    ] {
        let g = Conv2dGeom {
            c_in,
            h: 9,
            w: 9,
            c_out: 7,
            kh,
            kw: kh,
            stride: [1, 1],
            pads: [1; 4],
            dilation: [1, 1],
            groups: 1,
        };
        let mut c = case(g, 4, c_in as u64);
        for (i, v) in c.x.iter_mut().enumerate() {
            if i % 3 == 0 {
                *v = -128;
            }
        }
        check_i8(&c).unwrap();
    }
    // Kernels wider or taller than the GEMM's tap tables (16), strides of
    // 1 to 3 along x.
    for (kh, kw, sx) in [(1usize, 17usize, 1usize), (17, 1, 2), (1, 18, 3), (3, 3, 3)] {
        let g = Conv2dGeom {
            c_in: 5,
            h: 20,
            w: 40,
            c_out: 9,
            kh,
            kw,
            stride: [1, sx],
            pads: [kh / 2, kw / 2, kh / 2, 1],
            dilation: [1, 1],
            groups: 1,
        };
        for b in 2..=4 {
            check_i8(&case(g, b, (kh * 100 + kw * 10 + sx) as u64)).unwrap();
        }
    }
}

/// Layers with more than 512 KiB of weights, where the x86 GEMM fetches
/// the next tile's rows ahead in an instance of its own; 250 rows end in
/// a short tile. (x86-64 only: the path is x86's, and under qemu the
/// scalar reference of these layers is slow.)
#[cfg(target_arch = "x86_64")]
#[test]
fn gemm_layers_past_l2() {
    for hw in [4usize, 7] {
        check_i8(&case(same3x3(256, hw, 250), 4, hw as u64)).unwrap();
    }
}

/// Output planes of whole vectors and one more pixel (17, 33 and 49
/// pixels: a 7x7 plane is three vectors and one), whose pixel the x86
/// GEMM sums in the same pass over the weights as the vectors, with a
/// tile of as many rows again; 65 pixels (a block and one pixel) take
/// the separate tail. Row counts end in short tiles of every size.
#[test]
fn gemm_one_pixel_tails() {
    for (h, w) in [(1usize, 17usize), (3, 11), (7, 7), (5, 13)] {
        for c_out in [3usize, 10, 16, 27] {
            let g = Conv2dGeom {
                c_in: 19,
                h,
                w,
                c_out,
                kh: 3,
                kw: 3,
                stride: [1, 1],
                pads: [1; 4],
                dilation: [1, 1],
                groups: 1,
            };
            for b in 2..=4 {
                check_i8(&case(g, b, (h * 1000 + w * 10 + c_out) as u64)).unwrap();
            }
        }
    }
}

/// The x86 panel's permuted taps: planes of at most 64 bytes (one
/// `vpermb` of the plane) and blocks whose input rows fit 128 bytes (one
/// `vpermi2b`), including a window whose last byte is read (32-wide rows
/// at column stride 2: a block is 4 output rows of 16, 4 input rows of
/// 32 bytes), dilation and padding wider than the kernel's reach.
#[test]
fn gemm_panel_windows() {
    for (h, w, stride, dilation, pad) in [
        (12usize, 32usize, [1usize, 2usize], 1usize, 1usize),
        (10, 10, [1, 1], 1, 1),
        (8, 8, [1, 1], 1, 1),
        (9, 7, [2, 2], 2, 2),
        (11, 11, [1, 2], 1, 3),
    ] {
        let g = Conv2dGeom {
            c_in: 13,
            h,
            w,
            c_out: 21,
            kh: 3,
            kw: 3,
            stride,
            pads: [pad; 4],
            dilation: [dilation; 2],
            groups: 1,
        };
        for b in 2..=4 {
            check_i8(&case(g, b, (h * 100 + w) as u64)).unwrap();
        }
    }
    // Kernels of up to 49 taps, whose tap tables the builder keeps: a
    // 7x7 kernel on an 8x8 plane, 6x5 on a 12-row window.
    for (h, w, kh, kw) in [(8usize, 8usize, 7usize, 7usize), (12, 10, 6, 5)] {
        let g = Conv2dGeom {
            c_in: 6,
            h,
            w,
            c_out: 11,
            kh,
            kw,
            stride: [1, 1],
            pads: [kh / 2, kw / 2, kh / 2, kw / 2],
            dilation: [1, 1],
            groups: 1,
        };
        for b in 2..=4 {
            check_i8(&case(g, b, (h * 100 + kw) as u64)).unwrap();
        }
    }
}

/// Stride-2 layers, which the AVX-512 GEMM reads through a phase split
/// of their input when a block's taps then fit one permute: ResNet's
/// 3x3/2 shapes (a 128-byte window, a 64-byte plane), odd input sizes and
/// asymmetric padding, even kernels (whose phase planes are a row and a
/// column short of the padded input's half), one-row and one-column
/// kernels (a single row or column phase), groups, and output rows a
/// multiple of 16 pixels, whose blocks keep within a row.
#[test]
fn gemm_phase_split() {
    for (h, w, kh, kw, pads, groups) in [
        (28usize, 28usize, 3usize, 3usize, [1usize, 1, 1, 1], 1usize),
        (14, 14, 3, 3, [1, 1, 1, 1], 1),
        (15, 13, 3, 3, [1, 0, 0, 1], 1),
        (9, 9, 2, 2, [0, 0, 0, 0], 1),
        (10, 11, 4, 4, [1, 2, 1, 0], 1),
        (12, 12, 1, 3, [0, 1, 0, 1], 1),
        (16, 30, 3, 1, [1, 0, 1, 0], 1),
        (11, 12, 5, 5, [2, 2, 2, 2], 2),
        // Output rows of 48 and 64 pixels: blocks within a row, a load
        // per tap (a 7x7/2 stem shape, a 3x3/2 one).
        (96, 96, 7, 7, [3, 3, 3, 3], 1),
        (8, 128, 3, 3, [1, 1, 1, 1], 1),
        (9, 96, 5, 5, [2, 1, 2, 2], 2),
    ] {
        let g = Conv2dGeom {
            c_in: 14,
            h,
            w,
            c_out: 22,
            kh,
            kw,
            stride: [2, 2],
            pads,
            dilation: [1, 1],
            groups,
        };
        for b in 2..=4 {
            check_i8(&case(g, b, (h * 100 + w + kh) as u64)).unwrap();
        }
    }
}

/// The batched linear GEMMs of this target that this CPU runs, each with
/// the largest `k` it takes.
fn linear_gemms() -> Vec<(&'static str, dispatch::LinFn, usize)> {
    let mut v: Vec<(&'static str, dispatch::LinFn, usize)> = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        use dispatch::Layers;
        use shiftnn_kernels::x86_64::{gemm, gemm_avx2, gemm_vnni};
        if Isa::Avx512.available() {
            v.push((
                "avx512/gemm-dot",
                gemm::linear_gemm_i8,
                Layers::Gemm.max_k(),
            ));
        }
        if Isa::AvxVnni.available() {
            v.push((
                "avxvnni/gemm-dot",
                gemm_vnni::linear_gemm_i8,
                Layers::Gemm.max_k(),
            ));
        }
        if Isa::Avx2.available() {
            v.push((
                "avx2/gemm-dot",
                gemm_avx2::linear_gemm_i8,
                Layers::GemmI16.max_k(),
            ));
        }
    }
    #[cfg(target_arch = "aarch64")]
    if Isa::NeonDot.available() {
        v.push((
            "neondot/gemm-dot",
            shiftnn_kernels::aarch64::gemm::linear_gemm_i8,
            gemm::MAX_K,
        ));
    }
    v
}

/// The multiplication-free batched linear GEMM on exponent lists, if this
/// CPU runs it.
fn lists_linear_gemm() -> Option<dispatch::ListLinFn> {
    #[cfg(target_arch = "x86_64")]
    if Isa::Avx512.available() {
        return Some(shiftnn_kernels::x86_64::gemm_shift::linear_gemm_shift_i8);
    }
    None
}

/// The float batched linear GEMM and its FMA baseline, if this CPU runs
/// them.
fn float_linear_gemms() -> Vec<(&'static str, dispatch::F32LinFn)> {
    #[cfg(target_arch = "x86_64")]
    if Isa::Avx512.available() {
        use shiftnn_kernels::x86_64::gemm_fexp;
        return vec![
            ("avx512/gemm-fexp", gemm_fexp::linear_gemm_fexp_f32),
            ("avx512/gemm-fma-baseline", gemm_fexp::linear_gemm_fma_f32),
        ];
    }
    Vec::new()
}

/// A batch of `m` int8 rows for `c` (`k` inputs each), -128 and 127 one
/// time in four, and the scalar outputs row by row.
fn batch(c: &Case, m: usize, seed: u64) -> (Vec<i8>, Vec<i8>) {
    let (k, n) = (c.g.k(), c.g.c_out);
    let mut r = Rng(seed ^ 0xbeef);
    let x: Vec<i8> = (0..m * k)
        .map(|_| match r.next() % 8 {
            0 => -128,
            1 => 127,
            _ => r.next() as i8,
        })
        .collect();
    let w = PackedRows::new(&c.packed, c.bits, n, k).unwrap();
    let mut want = vec![0i8; m * n];
    for j in 0..m {
        scalar::conv_shift_i8(
            &c.g,
            &x[j * k..][..k],
            &w,
            0,
            &c.rq,
            &mut want[j * n..][..n],
        );
    }
    (x, want)
}

/// Batched linear layers through the pixel-lane GEMMs (batch rows in the
/// lanes): the `dot` GEMM on decoded rows (`vpgatherdd` panel on x86,
/// 8-row sub-blocks on aarch64) and the exponent-list GEMM, where this
/// CPU runs them: each output row equals `scalar` on that input row;
/// batches around the vectors and 64-row blocks, `k` with and without a
/// partial last step.
fn check_linear_batch(
    m: usize,
    k: usize,
    n: usize,
    b: u32,
    seed: u64,
) -> Result<(), TestCaseError> {
    let g = Conv2dGeom::linear(k, n);
    let c = case(g, b, seed);
    let (x, want) = batch(&c, m, seed);
    let w = PackedRows::new(&c.packed, c.bits, n, k).unwrap();
    for (name, f, _) in linear_gemms()
        .into_iter()
        .filter(|&(_, _, max_k)| k <= max_k)
    {
        let (dw, corr, sh, at, fix) = decode_rows(&w, gemm::Order::Codes);
        let d = gemm::DecodedRows::new(&dw, &corr, &sh, &at, &fix, k, gemm::Order::Codes).unwrap();
        let mut got = vec![0i8; m * n];
        f(&x, m, &d, &c.rq, &mut got);
        prop_assert_eq!(&got, &want, "{} m {} k {} n {} b {}", name, m, k, n, b);
    }
    if let Some(f) = lists_linear_gemm().filter(|_| k <= lists::MAX_K) {
        let (mut idx, mut at) = (vec![0u16; n * k], vec![0u32; lists::offsets_len(&w)]);
        lists::decode(&w, &mut idx, &mut at);
        let l = lists::ExpLists::new(&idx, &at, n, k, c.bits).unwrap();
        let mut got = vec![0i8; m * n];
        f(&x, m, &l, &c.rq, &mut got);
        prop_assert_eq!(&got, &want, "gemm-shift m {} k {} n {} b {}", m, k, n, b);
    }
    Ok(())
}

/// Float batched linear layers through the float GEMM and its FMA
/// baseline, where this CPU runs them: every output whose batch row
/// holds an activation off the fast path equals `scalar` bit for bit (NaN:
/// NaN); the others are within the summation bound of the conv GEMM's
/// tests. Returns how many kernels ran.
fn check_linear_float(
    m: usize,
    k: usize,
    n: usize,
    b: u32,
    seed: u64,
    edges: bool,
) -> Result<usize, TestCaseError> {
    let g = Conv2dGeom::linear(k, n);
    let mut c = case(g, b, seed);
    let (x, _) = batch(&c, m, seed);
    c.x = x;
    let xf = float_acts(&c, seed, edges);
    let w = PackedRows::new(&c.packed, c.bits, n, k).unwrap();
    let ep = vec![Affine::IDENTITY; n];
    let mut want = vec![0f32; m * n];
    for j in 0..m {
        scalar::conv_shift_f32(&g, &xf[j * k..][..k], &w, 0, &ep, &mut want[j * n..][..n]);
    }
    let kernels = float_linear_gemms();
    for &(name, f) in &kernels {
        let mut got = vec![0f32; m * n];
        f(&xf, m, &w, &ep, &mut got);
        for j in 0..m {
            let row = &xf[j * k..][..k];
            for oc in 0..n {
                let terms: Vec<(f32, i32)> = (0..k)
                    .map(|i| (row[i], c.bits.value(c.codes[oc * k + i])))
                    .collect();
                check_float_out(got[j * n + oc], want[j * n + oc], &terms, false, || {
                    format!("{name} m {m} k {k} n {n} b {b} row {j} oc {oc}")
                })?;
            }
        }
    }
    Ok(kernels.len())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn linear_batches_equal_scalar(
        m in 1usize..140,
        k in 1usize..600,
        n in 1usize..40,
        b in 2u32..5,
        seed in any::<u64>(),
    ) {
        check_linear_batch(m, k, n, b, seed)?;
    }

    /// Random batches, widths and, in half the cases, activations off the
    /// fast path.
    #[test]
    fn float_linear_batches_within_bound(
        m in 1usize..140,
        k in 1usize..600,
        n in 1usize..40,
        b in 2u32..5,
        seed in any::<u64>(),
        edges in any::<bool>(),
    ) {
        check_linear_float(m, k, n, b, seed, edges)?;
    }
}

/// The batches the runtime sends the GEMMs (from `MIN_LINEAR_BATCH`):
/// one vector and one lane more, two halves of 32 and a ragged one, a
/// whole block; odd `k` (partial last steps of 1-3 weights, the `i16`
/// panel and the byte panel) and odd `n` (ragged row blocks), every width.
#[test]
fn linear_batches_of_the_runtime() {
    let mut seed = 500u64;
    for m in [8usize, 9, 17, 64] {
        for (k, n) in [(1usize, 17usize), (7, 33), (191, 19), (193, 21), (501, 45)] {
            for b in 2..=4 {
                seed += 1;
                check_linear_batch(m, k, n, b, seed).unwrap();
                check_linear_float(m, k, n, b, seed, false).unwrap();
                check_linear_float(m, k, n, b, seed, true).unwrap();
            }
        }
    }
}

/// Long rows: every panel width of the batched GEMMs, and the float
/// GEMM's row-by-row fallback past its panel.
#[test]
fn linear_batches_long_k() {
    for (m, k) in [
        (64usize, 4096usize),
        (70, 5000),
        (33, 9001),
        (17, gemm::MAX_K),
    ] {
        check_linear_batch(m, k, 7, 4, k as u64).unwrap();
    }
    for (m, k) in [(64usize, 1152usize), (50, 1153), (64, 4096), (9, 4609)] {
        check_linear_float(m, k, 5, 3, k as u64, k % 2 == 1).unwrap();
    }
}

/// Every activation -128 or every one 127 against codes all of the
/// largest magnitude and one sign: the `i16` sums of the exponent-list
/// GEMM at their 255-weight flush limit, and the float GEMM's largest
/// terms, for every batch the runtime sends.
#[test]
fn linear_batches_extreme_activations() {
    for b in 2..=4u32 {
        let bits = Bits::new(b).unwrap();
        let top = (1u8 << (b - 1)) - 1;
        for (m, k, n) in [
            (8usize, 1021usize, 17usize),
            (9, 255, 16),
            (17, 511, 19),
            (64, 767, 33),
        ] {
            for (xv, sign) in [(-128i8, 0u8), (127, 0), (-128, 1), (127, 1)] {
                let g = Conv2dGeom::linear(k, n);
                let mut c = case(g, b, (m * k + n) as u64);
                // Row 0 all of one code; the others keep random codes.
                for i in 0..k {
                    c.codes[i] = top | (sign << (b - 1));
                }
                pack(&c.codes, bits, n, k, &mut c.packed);
                let w = PackedRows::new(&c.packed, bits, n, k).unwrap();
                let x = vec![xv; m * k];
                let mut want = vec![0i8; m * n];
                for j in 0..m {
                    scalar::conv_shift_i8(
                        &g,
                        &x[j * k..][..k],
                        &w,
                        0,
                        &c.rq,
                        &mut want[j * n..][..n],
                    );
                }
                if let Some(f) = lists_linear_gemm() {
                    let (mut idx, mut at) = (vec![0u16; n * k], vec![0u32; lists::offsets_len(&w)]);
                    lists::decode(&w, &mut idx, &mut at);
                    let l = lists::ExpLists::new(&idx, &at, n, k, bits).unwrap();
                    let mut got = vec![0i8; m * n];
                    f(&x, m, &l, &c.rq, &mut got);
                    assert_eq!(got, want, "gemm-shift b {b} m {m} k {k} x {xv} sign {sign}");
                }
                let xf = vec![xv as f32 * 1.0e30; m * k];
                let ep = vec![Affine::IDENTITY; n];
                let mut want = vec![0f32; m * n];
                for j in 0..m {
                    scalar::conv_shift_f32(
                        &g,
                        &xf[j * k..][..k],
                        &w,
                        0,
                        &ep,
                        &mut want[j * n..][..n],
                    );
                }
                for (name, f) in float_linear_gemms() {
                    let mut got = vec![0f32; m * n];
                    f(&xf, m, &w, &ep, &mut got);
                    // Row 0's terms are all equal: every order of the sum
                    // rounds alike, so equality.
                    for j in 0..m {
                        assert_eq!(got[j * n], want[j * n], "{name} b {b} m {m} k {k} row {j}");
                    }
                }
            }
        }
    }
}

/// A depthwise layer of `c` channels on an `h x w` plane, square kernel
/// `k`, stride `s`, padding `p` on every side, dilation `d`.
fn depthwise_geom(
    c: usize,
    h: usize,
    w: usize,
    k: usize,
    s: usize,
    p: usize,
    d: usize,
) -> Conv2dGeom {
    Conv2dGeom {
        c_in: c,
        h,
        w,
        c_out: c,
        kh: k,
        kw: k,
        stride: [s, s],
        pads: [p; 4],
        dilation: [d, d],
        groups: c,
    }
}

/// Depthwise layers on every plane from 1x1 to 20x20 (and some
/// non-square ones), 3x3 and 5x5 kernels, strides 1 to 3, paddings 0 to
/// 2, b = 2, 3, 4: the depthwise kernels' flattened planes, where the
/// lanes past each row's end and the zero border of every tap must never
/// leak into a kept output, whole and split by channel.
#[test]
fn depthwise_small_planes() {
    let mut seed = 1000u64;
    let mut planes: Vec<(usize, usize)> = (1..=20).map(|n| (n, n)).collect();
    planes.extend([(1, 9), (9, 1), (2, 17), (7, 14), (14, 7), (5, 12), (13, 3)]);
    for (h, w) in planes {
        for k in [3, 5] {
            for s in 1..=3 {
                for p in 0..=2 {
                    for b in 2..=4 {
                        let g = depthwise_geom(3 + (h + w) % 3, h, w, k, s, p, 1);
                        if g.validate().is_err() {
                            continue;
                        }
                        seed += 1;
                        check_i8(&case(g, b, seed)).unwrap();
                    }
                }
            }
        }
    }
    // Dilation 2 and unequal strides along y and x.
    for (h, w, sy, sx) in [(7, 7, 1, 2), (14, 14, 2, 1), (9, 12, 2, 3), (11, 5, 3, 2)] {
        for b in 2..=4 {
            let mut g = depthwise_geom(4, h, w, 3, 1, 2, 2);
            g.stride = [sy, sx];
            seed += 1;
            check_i8(&case(g, b, seed)).unwrap();
        }
    }
}

/// MobileNet's depthwise shapes (7x7 to 56x56, 3x3, stride 1 and 2, pad
/// 1, and unpadded) with constant extreme activations (-128, 127) or a
/// -128/127 checkerboard, and codes whose `2^p` sum to 255, 256 and 257
/// per channel, all of one sign or mixed: the sums that just fit or just
/// miss the kernels' `i16` lanes (whole, or in groups of three taps on
/// the larger planes), with a gain that shows an accumulator off by
/// 2^16.
#[test]
fn depthwise_extreme_codes_and_activations() {
    // Exponents of the nine taps: sum of 2^p = 255, 256, 257, and all 7.
    let sets: [[u32; 9]; 4] = [
        [7, 6, 5, 4, 3, 2, 0, 0, 0],
        [7, 6, 5, 4, 3, 2, 1, 0, 0],
        [7, 6, 5, 4, 3, 2, 1, 1, 0],
        [7; 9],
    ];
    for hw in [7usize, 14, 28, 56] {
        for s in [1usize, 2] {
            for p in [0usize, 1] {
                let g = depthwise_geom(8, hw, hw, 3, s, p, 1);
                for xv in [-128i8, 127, 0] {
                    let mut c = case(g, 4, (hw * 10 + s) as u64);
                    let bits = c.bits;
                    // Channel `ch`: set `ch % 4`, signs all +, all -, or
                    // alternating (`ch / 4`), taps in a rotated order.
                    c.codes = (0..g.c_out * g.k())
                        .map(|i| {
                            let (ch, t) = (i / g.k(), i % g.k());
                            let e = sets[ch % 4][(t + ch) % 9];
                            let neg = match ch / 4 {
                                0 => ch % 2 == 1,
                                _ => t % 2 == 1,
                            };
                            bits.encode(neg, e)
                        })
                        .collect();
                    c.packed = vec![0u8; g.c_out * bits.row_bytes(g.k())];
                    pack(&c.codes, bits, g.c_out, g.k(), &mut c.packed);
                    // 0 stands for the checkerboard.
                    c.x = (0..g.in_len())
                        .map(|i| match xv {
                            0 => [-128, 127][(i + i / hw) % 2],
                            v => v,
                        })
                        .collect();
                    c.rq = (0..g.c_out)
                        .map(|ch| Requant::from_real(1.0 / [512.0, 4096.0][ch % 2], 0.0, -128, 127))
                        .collect();
                    check_i8(&c).unwrap();
                    for b in [2u32, 3] {
                        let mut c2 = case(g, b, xv as u64 & 0xff);
                        c2.x.clone_from(&c.x);
                        check_i8(&c2).unwrap();
                    }
                }
            }
        }
    }
}

/// Depthwise layers the band buffer of the depthwise kernels cannot hold
/// in one piece: rows split into several bands and segments (long rows),
/// and the shapes they hand to the reference kernel (kernels past 8x8,
/// a dilation wider than the buffer).
#[test]
fn depthwise_bands_segments_and_fallbacks() {
    let mut seed = 77u64;
    for (c, h, w, k, s, p, d) in [
        (2usize, 4usize, 6000usize, 3usize, 1usize, 1usize, 1usize),
        (2, 5, 12001, 3, 2, 1, 1),
        (2, 7, 7000, 5, 3, 2, 1),
        (3, 40, 400, 3, 1, 1, 1),
        (3, 60, 300, 3, 2, 1, 1),
        (2, 12, 12, 9, 1, 4, 1),
        (2, 3, 20000, 2, 1, 0, 15000),
    ] {
        for b in [2, 4] {
            let g = depthwise_geom(c, h, w, k, s, p, d);
            let g = Conv2dGeom {
                dilation: [1, d],
                kh: k.min(h),
                ..g
            };
            g.validate().unwrap();
            seed += 1;
            check_i8(&case(g, b, seed)).unwrap();
        }
    }
}

/// The float depthwise kernels (`*/dw-fexp`) add each pixel's taps in the
/// scalar order, with exact products: bit for bit equal to `scalar` (but
/// for the sign of zero outputs), on
/// small planes, strides 1-3, paddings, dilation 2, rows wider than the
/// kernel's 256-column chunk, with zeros, subnormals, huge values,
/// infinities and NaN among the activations, whole and split by channel.
#[test]
fn depthwise_float_equals_scalar_bitwise() {
    let specials = [
        0.0f32,
        -0.0,
        f32::from_bits(1),
        -f32::from_bits(0x0040_0000),
        1.0e38,
        -3.0e38,
        f32::INFINITY,
        f32::NAN,
    ];
    let mut geoms = Vec::new();
    for (h, w) in [
        (1, 1),
        (2, 17),
        (5, 5),
        (7, 7),
        (9, 12),
        (14, 7),
        (3, 300),
        (2, 520),
        (40, 30),
        (120, 130),
        (200, 100),
    ] {
        for k in [3, 5] {
            for s in 1..=3 {
                for p in 0..=2 {
                    geoms.push(depthwise_geom(3 + (h + w) % 3, h, w, k, s, p, 1));
                }
            }
        }
    }
    for (h, w, sy, sx) in [(7, 7, 1, 2), (14, 14, 2, 1), (9, 12, 2, 3), (9, 9, 1, 1)] {
        let mut g = depthwise_geom(4, h, w, 3, 1, 2, 2);
        g.stride = [sy, sx];
        geoms.push(g);
    }
    geoms.push(depthwise_geom(3, 12, 10, 3, 1, 1, 3));
    let mut seed = 7000u64;
    let mut ran = 0;
    for g in geoms.into_iter().filter(|g| g.validate().is_ok()) {
        for b in 2..=4 {
            seed += 1;
            let c = case(g, b, seed);
            let w = PackedRows::new(&c.packed, c.bits, g.c_out, g.k()).unwrap();
            // Post-ReLU-like: about half the activations are zeros, whole
            // neighbourhoods of them, whose sums must stay exactly zero.
            let mut xf: Vec<f32> = c.x.iter().map(|&v| v.max(0) as f32 / 8.0).collect();
            let mut rng = Rng(seed);
            for _ in 0..xf.len() / 7 {
                let i = rng.next() as usize % xf.len();
                xf[i] = specials[rng.next() as usize % specials.len()];
            }
            let ep: Vec<Affine> = (0..g.c_out)
                .map(|i| Affine {
                    scale: 0.5 + i as f32,
                    bias: if i % 2 == 0 { 0.0 } else { -1.0 },
                    lo: -50.0,
                    hi: f32::INFINITY,
                })
                .collect();
            let mut want = vec![0f32; g.out_len()];
            scalar::conv_shift_f32(&g, &xf, &w, 0, &ep, &mut want);
            for k in dispatch::kernels() {
                let KernelFn::ShiftF32(f) = k.f else { continue };
                if !k.isa.available() || k.layers != dispatch::Layers::Depthwise {
                    continue;
                }
                let plane = g.out_h() * g.out_w();
                let mut got = vec![0f32; g.out_len()];
                let split = g.c_out / 2;
                f(
                    &g,
                    &xf,
                    &w.sub_rows(0, split),
                    0,
                    &ep[..split],
                    &mut got[..split * plane],
                );
                f(
                    &g,
                    &xf,
                    &w.sub_rows(split, g.c_out - split),
                    split,
                    &ep[split..],
                    &mut got[split * plane..],
                );
                for (i, (&a, &e)) in got.iter().zip(&want).enumerate() {
                    // The flattened planes add padded taps as zeros: a zero
                    // output's sign may differ (the documented exception).
                    let zeros = a == 0.0 && e == 0.0;
                    assert!(
                        a.to_bits() == e.to_bits() || (a.is_nan() && e.is_nan()) || zeros,
                        "kernel {} {g:?} b {b} out {i}: got {a:e} want {e:e}",
                        k.name
                    );
                }
                ran += 1;
            }
        }
    }
    let available = dispatch::kernels().any(|k| {
        matches!(k.f, KernelFn::ShiftF32(_))
            && k.layers == dispatch::Layers::Depthwise
            && k.isa.available()
    });
    assert_eq!(ran > 0, available, "the dw-fexp kernels of this level ran");
}

/// The decoded-row GEMMs at each width of their pixel blocks: `k` whose
/// panel holds 64, 48, 32 and 16 pixels (`neondot/gemm-dot` sizes its
/// blocks from `k`), on a plane of 100 pixels (full blocks and a tail of
/// 4, a partial 8-pixel sub-block), 9 rows (a full 8-row block and a
/// 1-row tail; split, 5 and 4), random 4-bit codes and, for the extremes,
/// every weight +128 (a fix in every block) against -128 activations.
#[test]
fn gemm_block_widths_and_extremes() {
    for c_in in [512usize, 600, 700, 1100] {
        let g = same3x3(c_in, 10, 9);
        check_i8(&case(g, 4, c_in as u64)).unwrap();
        let mut c = case(g, 4, c_in as u64 + 1);
        c.codes.fill(0b0111);
        pack(&c.codes, c.bits, g.c_out, g.k(), &mut c.packed);
        c.x.fill(-128);
        for (i, v) in c.x.iter_mut().enumerate() {
            if i % 5 == 0 {
                *v = 127;
            }
        }
        check_i8(&c).unwrap();
    }
}

/// The runtime decodes a layer's codes at load exactly when
/// `decoded_kernel` (the selection below under the process settings,
/// which other tests change meanwhile) names a SIMD kernel: on aarch64
/// that is `neondot/gemm-dot` with dotprod (qemu `-cpu max`) and the
/// scalar reference without it (`-cpu cortex-a72`: the layer keeps its
/// codes).
#[cfg(target_arch = "aarch64")]
#[test]
fn aarch64_decoded_kernel_follows_dotprod() {
    let g = Conv2dGeom {
        c_in: 16,
        h: 8,
        w: 8,
        c_out: 16,
        kh: 3,
        kw: 3,
        stride: [1, 1],
        pads: [1; 4],
        dilation: [1, 1],
        groups: 1,
    };
    assert!(gemm::applies(&g));
    let dot = Isa::NeonDot.available();
    let got = dispatch::select_with(Op::DecodedI8, &g, dispatch::detected(), None);
    assert_eq!(
        got.name,
        if dot {
            "neondot/gemm-dot"
        } else {
            "scalar/decoded-i8"
        }
    );
    eprintln!("dotprod {dot}: decoded-row kernel {}", got.name);
}

/// Stride-1 layers through the tap-major rows of the direct GEMM (every
/// decoded-row kernel that takes them, against `scalar`): input channels
/// not a multiple of 4 (padded quads), dilations along y and x, paddings
/// wider than the kernel's reach, unequal pads, 1x1 and 5x3 kernels,
/// planes needing several bands of the stack buffer (64 channels x 200
/// columns), output rows shorter than a vector and single-row outputs.
#[test]
fn direct_gemm_shapes() {
    let mut seed = 9000u64;
    let shapes = [
        // (c_in, h, w, c_out, kh, kw, pads [t, l, b, r], dilation, stride)
        (
            3usize,
            9usize,
            11usize,
            5usize,
            3usize,
            3usize,
            [1usize, 1, 1, 1],
            [1usize, 1],
            [1usize, 1],
        ),
        (6, 12, 10, 9, 3, 3, [2, 0, 1, 3], [2, 1], [1, 1]),
        (5, 10, 13, 8, 3, 3, [1, 2, 1, 2], [1, 2], [1, 1]),
        (8, 7, 20, 13, 5, 3, [2, 1, 2, 1], [1, 1], [1, 1]),
        (16, 18, 18, 4, 1, 1, [0, 0, 0, 0], [1, 1], [1, 1]),
        (7, 1, 40, 6, 1, 3, [0, 1, 0, 1], [1, 3], [1, 1]),
        (4, 3, 5, 12, 3, 3, [0, 0, 0, 0], [1, 1], [1, 1]),
        (64, 60, 200, 5, 3, 3, [1, 1, 1, 1], [1, 1], [1, 1]),
        (130, 20, 40, 7, 3, 3, [1, 1, 1, 1], [2, 2], [1, 1]),
        // Stride phases: a stem-like 7x7 on odd sizes, ResNet's 3x3 / 2
        // on even and odd maps, strides along one axis with dilation
        // along the other, a 1x1 / 2, and a map needing several bands.
        (3, 23, 25, 6, 7, 7, [3, 3, 3, 3], [1, 1], [2, 2]),
        (8, 14, 15, 9, 3, 3, [1, 1, 1, 1], [1, 1], [2, 2]),
        (12, 15, 16, 6, 3, 3, [1, 1, 1, 1], [1, 1], [2, 2]),
        (5, 13, 12, 7, 3, 3, [0, 1, 2, 0], [1, 2], [2, 1]),
        (6, 11, 17, 5, 3, 5, [1, 2, 1, 2], [2, 1], [1, 2]),
        (16, 9, 9, 8, 1, 1, [0, 0, 0, 0], [1, 1], [2, 2]),
        (128, 80, 80, 5, 3, 3, [1, 1, 1, 1], [1, 1], [2, 2]),
    ];
    let mut ran = 0;
    for (c_in, h, w, c_out, kh, kw, pads, dilation, stride) in shapes {
        let g = Conv2dGeom {
            c_in,
            h,
            w,
            c_out,
            kh,
            kw,
            stride,
            pads,
            dilation,
            groups: 1,
        };
        g.validate().unwrap();
        assert!(
            gemm::taps_order(&g).is_some(),
            "{g:?} has a tap-major order"
        );
        for b in [2, 4] {
            seed += 1;
            let mut c = case(g, b, seed);
            // Extremes in a third of the activations: the +128 fixes and
            // the unsigned offset at their limits.
            for (i, v) in c.x.iter_mut().enumerate() {
                if i % 3 == 0 {
                    *v = if i % 2 == 0 { -128 } else { 127 };
                }
            }
            check_i8(&c).unwrap();
            ran += 1;
        }
    }
    assert_eq!(ran, 32);
}
