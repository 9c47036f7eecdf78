//! Batched linear layers in int8 mode (the `dot` GEMMs of the AVX-512,
//! AVX-VNNI and AVX2 levels, on rows decoded at load), under a forced
//! multiplication-free family (int8, `shift`) and in float mode: where the
//! CPU runs the pixel-lane GEMMs (AVX-512: `avx512/gemm-shift` on exponent
//! lists regrouped at load, `avx512/gemm-fexp` on the codes), the model
//! runs the whole batch
//! through them, and its outputs equal those of the same model loaded and
//! run with the `scalar` family forced, at one and two threads.
//!
//! Float sums are exact here (activations are multiples of 1/16 and small,
//! weights powers of two), so the order of the additions cannot show and
//! float outputs are compared bit for bit too; rows holding an infinity, a
//! NaN or a subnormal take the kernels' exact path.

mod common;
use common::{Builder, Rng};
use shiftnn_kernels::codes::pack;
use shiftnn_kernels::dispatch::{self, Family, Isa};
use shiftnn_kernels::Bits;
use shiftnn_runtime::graph::{Act, DType, Mode, Op, WeightKind, WeightRef};
use shiftnn_runtime::{Model, Session};
use std::sync::Mutex;

/// The dispatch settings are process-wide.
static SETTINGS: Mutex<()> = Mutex::new(());

/// One linear layer of `m` rows, `k` inputs, `n` outputs (`bits`-bit
/// codes, bias) between float input and output; in int8 mode with a
/// quantize before and a dequantize after. Node 1 is the linear layer.
fn model(mode: Mode, m: usize, k: usize, n: usize, bits: Bits, seed: u64) -> Vec<u8> {
    let mut rng = Rng(seed);
    let mut b = Builder::new(mode);
    let input = b.value("input", &[m, k], DType::F32, 0.0);
    let x = match mode {
        Mode::Int8 => {
            let xq = b.value("input:q", &[m, k], DType::I8, 0.03);
            b.node("quant", Op::Quantize, &[input], xq);
            xq
        }
        Mode::Float => {
            // Node 0 in both modes: a ReLU in float mode.
            let r = b.value("relu", &[m, k], DType::F32, 0.0);
            b.node("relu", Op::Act { act: Act::Relu }, &[input], r);
            r
        }
    };
    let codes: Vec<u8> = (0..n * k)
        .map(|_| rng.below(1 << bits.get()) as u8)
        .collect();
    let mut packed = vec![0u8; n * bits.row_bytes(k)];
    pack(&codes, bits, n, k, &mut packed);
    b.u8("fc.weight", &[n, bits.row_bytes(k)], &packed);
    let ws: Vec<f32> = (0..n).map(|_| rng.f32(0.0005, 0.002)).collect();
    let bias: Vec<f32> = (0..n).map(|_| rng.f32(-0.3, 0.3)).collect();
    b.f32("fc.wscale", &[n], &ws);
    b.f32("fc.bias", &[n], &bias);
    let (dt, sy) = match mode {
        Mode::Int8 => (DType::I8, 0.05),
        Mode::Float => (DType::F32, 0.0),
    };
    let y = b.value("y", &[m, n], dt, sy);
    let fc = Op::Linear {
        weight: WeightRef {
            kind: WeightKind::Shift,
            bits: bits.get() as u8,
            tensor: "fc.weight".into(),
            scale: "fc.wscale".into(),
        },
        bias: Some("fc.bias".into()),
        norm: None,
        act: Act::None,
    };
    b.node("fc", fc, &[x], y);
    let out = match mode {
        Mode::Int8 => {
            let o = b.value("out", &[m, n], DType::F32, 0.0);
            b.node("deq", Op::Dequantize, &[y], o);
            o
        }
        Mode::Float => y,
    };
    b.finish(&[input], &[out])
}

/// The model loaded and run under `family` (loading decides what is
/// decoded), at `threads` threads: the outputs and the kernel that ran
/// the linear layer over its batch, if one did.
fn run(
    bytes: &[u8],
    x: &[f32],
    family: Option<Family>,
    threads: usize,
    reference: bool,
) -> (Vec<f32>, Option<&'static str>) {
    dispatch::set_family(family);
    let model = Model::from_bytes(bytes).unwrap();
    let mut sess = Session::new(&model).unwrap();
    sess.set_threads(threads).unwrap();
    sess.set_reference_kernels(reference);
    let mut y = vec![0f32; model.output_len(0)];
    sess.run(&[x], &mut [&mut y]).unwrap();
    (y, model.batched_linear_kernel(1))
}

fn same(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(p, q)| p.to_bits() == q.to_bits() || (p.is_nan() && q.is_nan()))
}

/// Under `forced`, each shape's batched linear layer runs `kernel` where
/// the CPU has AVX-512 (else row by row) and equals the `scalar` family.
fn check(mode: Mode, forced: Option<Family>, kernel: &str, specials: bool) {
    check_at(Isa::Avx512, mode, forced, kernel, specials)
}

/// [`check`] with the level capped at `level`: `kernel` runs the batch
/// where the CPU has that level, else the layer runs row by row.
fn check_at(level: Isa, mode: Mode, forced: Option<Family>, kernel: &str, specials: bool) {
    let _g = SETTINGS.lock().unwrap_or_else(|e| e.into_inner());
    let gemm = level.available();
    dispatch::set_isa_cap(Some(level));
    let r = std::panic::catch_unwind(|| {
        for (si, (m, k, n)) in [(8, 70, 24), (9, 33, 17), (17, 257, 19), (64, 1031, 40)]
            .into_iter()
            .enumerate()
        {
            for bits in [Bits::B2, Bits::B3, Bits::B4] {
                let seed = (si * 10 + bits.get() as usize) as u64;
                let bytes = model(mode, m, k, n, bits, seed);
                let mut rng = Rng(seed + 99);
                let mut x: Vec<f32> = (0..m * k)
                    .map(|_| (rng.below(129) as f32 - 64.0) / 16.0)
                    .collect();
                if specials {
                    // Rows holding values off the fexp fast path.
                    x[k + 3] = f32::INFINITY;
                    x[2 * k] = f32::NAN;
                    x[3 * k + 1] = f32::from_bits(3);
                    x[5 * k + k / 2] = 3.0e38;
                }
                let (want, none) = run(&bytes, &x, Some(Family::Scalar), 1, false);
                assert_eq!(none, None, "scalar forced: row by row");
                for threads in [1, 2] {
                    let (got, ran) = run(&bytes, &x, forced, threads, false);
                    assert_eq!(ran, gemm.then_some(kernel), "m {m} k {k} n {n}");
                    assert!(
                        same(&got, &want),
                        "{mode:?} {forced:?} m {m} k {k} n {n} b {} threads {threads}",
                        bits.get()
                    );
                }
                if mode == Mode::Float {
                    // Reference kernels run row by row whatever the GEMM.
                    let (got, _) = run(&bytes, &x, forced, 1, true);
                    assert!(same(&got, &want), "reference kernels m {m}");
                }
            }
        }
    });
    dispatch::set_family(None);
    dispatch::set_isa_cap(None);
    r.unwrap();
}

#[test]
fn int8_default_runs_the_dot_gemm_of_each_level() {
    check_at(Isa::Avx512, Mode::Int8, None, "avx512/gemm-dot", false);
    check_at(Isa::AvxVnni, Mode::Int8, None, "avxvnni/gemm-dot", false);
    check_at(Isa::Avx2, Mode::Int8, None, "avx2/gemm-dot", false);
}

#[test]
fn int8_forced_shift_equals_scalar() {
    check(Mode::Int8, Some(Family::Shift), "avx512/gemm-shift", false);
}

#[test]
fn int8_forced_lut_takes_the_shift_gemm() {
    check(Mode::Int8, Some(Family::Lut), "avx512/gemm-shift", false);
}

#[test]
fn float_default_and_forced_fexp_equal_scalar() {
    for specials in [false, true] {
        check(Mode::Float, None, "avx512/gemm-fexp", specials);
        check(
            Mode::Float,
            Some(Family::Fexp),
            "avx512/gemm-fexp",
            specials,
        );
        check(
            Mode::Float,
            Some(Family::Shift),
            "avx512/gemm-fexp",
            specials,
        );
    }
}
