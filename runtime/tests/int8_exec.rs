//! The int8 executor against an independent integer computation written
//! here with plain loops: decoded integer weights, explicit zero padding,
//! the test's own folding of bias and BatchNorm into each channel's gain and
//! offset. The only shared piece is the documented requantization rule
//! (`Requant::from_real`, `AddRequant::from_real`), which is the contract.

mod common;
use common::{Builder, Rng};
use shiftnn_kernels::codes::pack;
use shiftnn_kernels::scalar::AddRequant;
use shiftnn_kernels::{Bits, Requant};
use shiftnn_runtime::graph::{Act, DType, Mode, NormRef, Op, WeightKind, WeightRef};
use shiftnn_runtime::{Model, Session};

struct Conv {
    c_in: usize,
    c_out: usize,
    k: usize,
    stride: usize,
    pad: usize,
    groups: usize,
    w: Vec<i32>,
}

fn conv_ref(x: &[i32], h: usize, w: usize, c: &Conv) -> (Vec<i64>, usize, usize) {
    let oh = (h + 2 * c.pad - c.k) / c.stride + 1;
    let ow = (w + 2 * c.pad - c.k) / c.stride + 1;
    let cig = c.c_in / c.groups;
    let cog = c.c_out / c.groups;
    let mut out = vec![0i64; c.c_out * oh * ow];
    for oc in 0..c.c_out {
        let g = oc / cog;
        for oy in 0..oh {
            for ox in 0..ow {
                let mut acc = 0i64;
                for ic in 0..cig {
                    for ky in 0..c.k {
                        for kx in 0..c.k {
                            let iy = (oy * c.stride + ky) as i64 - c.pad as i64;
                            let ix = (ox * c.stride + kx) as i64 - c.pad as i64;
                            let v = if iy < 0 || ix < 0 || iy >= h as i64 || ix >= w as i64 {
                                0
                            } else {
                                x[((g * cig + ic) * h + iy as usize) * w + ix as usize] as i64
                            };
                            acc += v * c.w[((oc * cig + ic) * c.k + ky) * c.k + kx] as i64;
                        }
                    }
                }
                out[(oc * oh + oy) * ow + ox] = acc;
            }
        }
    }
    (out, oh, ow)
}

fn round_away(x: f64) -> i64 {
    if x >= 0.0 {
        (x + 0.5).floor() as i64
    } else {
        -((-x + 0.5).floor() as i64)
    }
}

fn shift_weights(rng: &mut Rng, bits: Bits, rows: usize, k: usize) -> (Vec<u8>, Vec<i32>) {
    let codes: Vec<u8> = (0..rows * k)
        .map(|_| rng.below(1 << bits.get()) as u8)
        .collect();
    let mut packed = vec![0u8; rows * bits.row_bytes(k)];
    pack(&codes, bits, rows, k, &mut packed);
    (packed, codes.iter().map(|&c| bits.value(c)).collect())
}

fn run_case(seed: u64) {
    let mut rng = Rng(seed);
    let (h, w) = (9usize, 7usize);
    let mut b = Builder::new(Mode::Int8);
    let sx = 0.02f32;
    let s1 = 0.05f32;
    let s2 = 0.04f32;
    let s3 = 0.03f32;
    let s4 = 0.06f32;
    let s6 = 1.0f32 / 127.0;
    let s9 = 0.01f32;
    let input = b.value("input", &[1, 3, h, w], DType::F32, 0.0);
    let xq = b.value("input:q", &[1, 3, h, w], DType::I8, sx);
    b.node("quant", Op::Quantize, &[input], xq);

    // conv1: 3 -> 8, 3x3, pad 1, 3-bit shift, bias, BN, ReLU.
    let c1 = Conv {
        c_in: 3,
        c_out: 8,
        k: 3,
        stride: 1,
        pad: 1,
        groups: 1,
        w: vec![],
    };
    let (p1, w1) = shift_weights(&mut rng, Bits::B3, 8, 27);
    let ws1: Vec<f32> = (0..8).map(|_| rng.f32(0.005, 0.02)).collect();
    let bias1: Vec<f32> = (0..8).map(|_| rng.f32(-0.3, 0.3)).collect();
    let gamma: Vec<f32> = (0..8).map(|_| rng.f32(0.5, 1.5)).collect();
    let beta: Vec<f32> = (0..8).map(|_| rng.f32(-0.2, 0.2)).collect();
    let mean: Vec<f32> = (0..8).map(|_| rng.f32(-0.1, 0.1)).collect();
    let var: Vec<f32> = (0..8).map(|_| rng.f32(0.5, 2.0)).collect();
    b.u8("c1.weight", &[8, Bits::B3.row_bytes(27)], &p1);
    b.f32("c1.wscale", &[8], &ws1);
    b.f32("c1.bias", &[8], &bias1);
    for (n, v) in [
        ("gamma", &gamma),
        ("beta", &beta),
        ("mean", &mean),
        ("var", &var),
    ] {
        b.f32(&format!("bn1.{n}"), &[8], v);
    }
    let v1 = b.value("v1", &[1, 8, h, w], DType::I8, s1);
    let wref = |n: &str, kind, bits| WeightRef {
        kind,
        bits,
        tensor: format!("{n}.weight"),
        scale: format!("{n}.wscale"),
    };
    b.node(
        "c1",
        Op::Conv {
            kernel: [3, 3],
            strides: [1, 1],
            pads: [1, 1, 1, 1],
            dilations: [1, 1],
            groups: 1,
            weight: wref("c1", WeightKind::Shift, 3),
            bias: Some("c1.bias".into()),
            norm: Some(NormRef {
                prefix: "bn1".into(),
                eps: 1e-5,
            }),
            act: Act::Relu,
        },
        &[xq],
        v1,
    );
    // dw: depthwise 3x3 stride 2 pad 1, 4-bit, ReLU6 clip.
    let cdw = Conv {
        c_in: 8,
        c_out: 8,
        k: 3,
        stride: 2,
        pad: 1,
        groups: 8,
        w: vec![],
    };
    let (pdw, wdw) = shift_weights(&mut rng, Bits::B4, 8, 9);
    let wsdw: Vec<f32> = (0..8).map(|_| rng.f32(0.001, 0.004)).collect();
    b.u8("dw.weight", &[8, Bits::B4.row_bytes(9)], &pdw);
    b.f32("dw.wscale", &[8], &wsdw);
    let v2 = b.value("v2", &[1, 8, 5, 4], DType::I8, s2);
    b.node(
        "dw",
        Op::Conv {
            kernel: [3, 3],
            strides: [2, 2],
            pads: [1, 1, 1, 1],
            dilations: [1, 1],
            groups: 8,
            weight: wref("dw", WeightKind::Shift, 4),
            bias: None,
            norm: None,
            act: Act::Clip { lo: 0.0, hi: 3.0 },
        },
        &[v1],
        v2,
    );
    // pw: 1x1 stride 2, 2-bit.
    let cpw = Conv {
        c_in: 8,
        c_out: 8,
        k: 1,
        stride: 2,
        pad: 0,
        groups: 1,
        w: vec![],
    };
    let (ppw, wpw) = shift_weights(&mut rng, Bits::B2, 8, 8);
    let wspw: Vec<f32> = (0..8).map(|_| rng.f32(0.01, 0.05)).collect();
    b.u8("pw.weight", &[8, Bits::B2.row_bytes(8)], &ppw);
    b.f32("pw.wscale", &[8], &wspw);
    let v3 = b.value("v3", &[1, 8, 5, 4], DType::I8, s3);
    b.node(
        "pw",
        Op::Conv {
            kernel: [1, 1],
            strides: [2, 2],
            pads: [0; 4],
            dilations: [1, 1],
            groups: 1,
            weight: wref("pw", WeightKind::Shift, 2),
            bias: None,
            norm: None,
            act: Act::None,
        },
        &[v1],
        v3,
    );
    let v4 = b.value("v4", &[1, 8, 5, 4], DType::I8, s4);
    b.node("add", Op::Add { act: Act::Relu }, &[v2, v3], v4);
    let v5 = b.value("v5", &[1, 8, 4, 3], DType::I8, s4);
    b.node(
        "mp",
        Op::MaxPool {
            kernel: [2, 2],
            strides: [1, 1],
            pads: [0; 4],
            dilations: [1, 1],
        },
        &[v4],
        v5,
    );
    let v6 = b.value("v6", &[1, 8, 4, 3], DType::I8, s6);
    b.node("sig", Op::Act { act: Act::Sigmoid }, &[v5], v6);
    let v7 = b.value("v7", &[1, 8, 1, 1], DType::I8, s6);
    b.node("gap", Op::GlobalAvgPool, &[v6], v7);
    let v8 = b.value("v8", &[1, 8], DType::I8, s6);
    b.node("flat", Op::Reshape, &[v7], v8);
    // fc: kept layer, int8 per-channel weights, bias.
    let wfc: Vec<i8> = (0..5 * 8).map(|_| rng.i8()).collect();
    let wsfc: Vec<f32> = (0..5).map(|_| rng.f32(0.001, 0.01)).collect();
    let bfc: Vec<f32> = (0..5).map(|_| rng.f32(-0.1, 0.1)).collect();
    b.i8("fc.weight", &[5, 8], &wfc);
    b.f32("fc.wscale", &[5], &wsfc);
    b.f32("fc.bias", &[5], &bfc);
    let v9 = b.value("v9", &[1, 5], DType::I8, s9);
    b.node(
        "fc",
        Op::Linear {
            weight: wref("fc", WeightKind::I8, 0),
            bias: Some("fc.bias".into()),
            norm: None,
            act: Act::None,
        },
        &[v8],
        v9,
    );
    let out = b.value("logits", &[1, 5], DType::F32, 0.0);
    b.node("deq", Op::Dequantize, &[v9], out);
    let bytes = b.finish(&[input], &[out]);

    let model = Model::from_bytes(&bytes).expect("load");
    // conv1 runs a pixel-lane GEMM on codes repacked at load wherever the
    // CPU and the settings choose one.
    let g1 = model.conv_geom(1).expect("conv1 is node 1");
    let (rows, lists) = (
        shiftnn_kernels::dispatch::decoded_kernel(&g1).is_some(),
        shiftnn_kernels::dispatch::lists_kernel(&g1).is_some(),
    );
    assert_eq!(model.decoded_rows(1).is_some(), rows);
    assert_eq!(model.decoded_lists(1).is_some(), lists && !rows);
    let mut sess = Session::new(&model).unwrap();
    let x: Vec<f32> = (0..3 * h * w).map(|_| rng.f32(-2.5, 2.5)).collect();
    let mut y = vec![0f32; 5];
    sess.run(&[&x], &mut [&mut y]).unwrap();

    // ---- independent computation ----
    let inv = 1.0f32 / sx;
    let xq: Vec<i32> = x
        .iter()
        .map(|&v| round_away((v * inv) as f64).clamp(-128, 127) as i32)
        .collect();
    let clampq = |v: f32, s: f32| round_away(v as f64 / s as f64).clamp(-128, 127) as i8;
    // conv1 + bias + BN + relu
    let c1 = Conv { w: w1, ..c1 };
    let (acc1, _, _) = conv_ref(&xq, h, w, &c1);
    let mut a1 = vec![0i32; acc1.len()];
    for oc in 0..8 {
        let k = gamma[oc] as f64 / (var[oc] as f64 + 1e-5f32 as f64).sqrt();
        let a = k * ws1[oc] as f64 * sx as f64 / s1 as f64;
        let bb = (k * (bias1[oc] as f64 - mean[oc] as f64) + beta[oc] as f64) / s1 as f64;
        let r = Requant::from_real(a, bb, 0, 127);
        for i in 0..h * w {
            a1[oc * h * w + i] = r.apply(acc1[oc * h * w + i] as i32) as i32;
        }
    }
    let cdw = Conv { w: wdw, ..cdw };
    let (acc2, oh, ow) = conv_ref(&a1, h, w, &cdw);
    assert_eq!((oh, ow), (5, 4));
    let hi2 = clampq(3.0, s2);
    let mut a2 = vec![0i8; acc2.len()];
    for oc in 0..8 {
        let r = Requant::from_real(wsdw[oc] as f64 * s1 as f64 / s2 as f64, 0.0, 0, hi2);
        for i in 0..20 {
            a2[oc * 20 + i] = r.apply(acc2[oc * 20 + i] as i32);
        }
    }
    let cpw = Conv { w: wpw, ..cpw };
    let (acc3, _, _) = conv_ref(&a1, h, w, &cpw);
    let mut a3 = vec![0i8; acc3.len()];
    for oc in 0..8 {
        let r = Requant::from_real(wspw[oc] as f64 * s1 as f64 / s3 as f64, 0.0, -128, 127);
        for i in 0..20 {
            a3[oc * 20 + i] = r.apply(acc3[oc * 20 + i] as i32);
        }
    }
    let ar = AddRequant::from_real(s2 as f64 / s4 as f64, s3 as f64 / s4 as f64, 0, 127);
    let a4: Vec<i8> = a2.iter().zip(&a3).map(|(&p, &q)| ar.apply(p, q)).collect();
    let mut a5 = [0i8; 8 * 12];
    for c in 0..8 {
        for oy in 0..4 {
            for ox in 0..3 {
                let mut m = i8::MIN;
                for ky in 0..2 {
                    for kx in 0..2 {
                        m = m.max(a4[(c * 5 + oy + ky) * 4 + ox + kx]);
                    }
                }
                a5[(c * 4 + oy) * 3 + ox] = m;
            }
        }
    }
    let a6: Vec<i8> = a5
        .iter()
        .map(|&q| {
            let v = 1.0 / (1.0 + (-(q as f32 * s4)).exp());
            clampq(v, s6)
        })
        .collect();
    let a7: Vec<i32> = (0..8)
        .map(|c| {
            let s: i64 = a6[c * 12..(c + 1) * 12].iter().map(|&v| v as i64).sum();
            round_away(s as f64 / 12.0) as i32
        })
        .collect();
    let mut want = vec![0f32; 5];
    for n in 0..5 {
        let acc: i64 = (0..8).map(|k| a7[k] as i64 * wfc[n * 8 + k] as i64).sum();
        let r = Requant::from_real(
            wsfc[n] as f64 * s6 as f64 / s9 as f64,
            bfc[n] as f64 / s9 as f64,
            -128,
            127,
        );
        want[n] = r.apply(acc as i32) as f32 * s9;
    }
    assert!(y.iter().any(|&v| v != 0.0), "degenerate logits {y:?}");
    assert_eq!(y, want, "seed {seed}");
    // The run must depend on the input: a different input changes logits.
    let x2: Vec<f32> = x.iter().map(|v| -v).collect();
    let mut y2 = vec![0f32; 5];
    sess.run(&[&x2], &mut [&mut y2]).unwrap();
    assert_ne!(y, y2);
}

/// The dispatch settings are process-wide: tests that change them or
/// depend on them take this lock.
static SETTINGS: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn int8_executor_matches_independent_integer_computation() {
    let _g = SETTINGS.lock().unwrap_or_else(|e| e.into_inner());
    for seed in [1u64, 7, 42, 1234, 99991] {
        run_case(seed);
    }
}

/// The same model with a forced multiplication-free family: where the CPU
/// runs the exponent-list GEMM (AVX-512), the model regroups its 3x3 conv
/// at load and runs it there (the lists are checked at load and viewed
/// unchecked per inference); the result is the same integer computation.
#[test]
fn int8_executor_with_forced_shift_family() {
    use shiftnn_kernels::dispatch::{self, Family};
    let _g = SETTINGS.lock().unwrap_or_else(|e| e.into_inner());
    dispatch::set_family(Some(Family::Shift));
    let r = std::panic::catch_unwind(|| {
        for seed in [3u64, 11, 4242] {
            run_case(seed);
        }
    });
    dispatch::set_family(None);
    r.unwrap();
}

/// A batched int8 linear layer (16 rows of 70 inputs, 4-bit codes with
/// +128 weights, 24 outputs) against the test's own integer sums: where the
/// CPU runs the pixel-lane GEMM (AVX-512), the model decodes the layer at
/// load and runs the batch in its lanes; elsewhere row by row on the codes.
/// Both at 1 and 2 threads.
#[test]
fn batched_linear_matches_integer_computation() {
    let _g = SETTINGS.lock().unwrap_or_else(|e| e.into_inner());
    let (m, k, n) = (16usize, 70usize, 24usize);
    let mut rng = Rng(5);
    let (sx, sy) = (0.03f32, 0.05f32);
    let mut b = Builder::new(Mode::Int8);
    let input = b.value("input", &[m, k], DType::F32, 0.0);
    let xq = b.value("input:q", &[m, k], DType::I8, sx);
    b.node("quant", Op::Quantize, &[input], xq);
    let (packed, w) = shift_weights(&mut rng, Bits::B4, n, k);
    assert!(w.contains(&128), "the weights exercise the +128 fix");
    let ws: Vec<f32> = (0..n).map(|_| rng.f32(0.0005, 0.002)).collect();
    let bias: Vec<f32> = (0..n).map(|_| rng.f32(-0.3, 0.3)).collect();
    b.u8("fc.weight", &[n, Bits::B4.row_bytes(k)], &packed);
    b.f32("fc.wscale", &[n], &ws);
    b.f32("fc.bias", &[n], &bias);
    let yq = b.value("y:q", &[m, n], DType::I8, sy);
    b.node(
        "fc",
        Op::Linear {
            weight: WeightRef {
                kind: WeightKind::Shift,
                bits: 4,
                tensor: "fc.weight".into(),
                scale: "fc.wscale".into(),
            },
            bias: Some("fc.bias".into()),
            norm: None,
            act: Act::None,
        },
        &[xq],
        yq,
    );
    let out = b.value("y", &[m, n], DType::F32, 0.0);
    b.node("deq", Op::Dequantize, &[yq], out);
    let bytes = b.finish(&[input], &[out]);
    let model = Model::from_bytes(&bytes).expect("load");
    let x: Vec<f32> = (0..m * k).map(|_| rng.f32(-4.0, 4.0)).collect();

    let xi: Vec<i64> = x
        .iter()
        .map(|&v| round_away((v * (1.0 / sx)) as f64).clamp(-128, 127))
        .collect();
    let mut want = vec![0f32; m * n];
    for j in 0..m {
        for o in 0..n {
            let acc: i64 = (0..k).map(|i| xi[j * k + i] * w[o * k + i] as i64).sum();
            let r = Requant::from_real(
                ws[o] as f64 * sx as f64 / sy as f64,
                bias[o] as f64 / sy as f64,
                -128,
                127,
            );
            want[j * n + o] = r.apply(acc as i32) as f32 * sy;
        }
    }
    for threads in [1, 2] {
        let mut sess = Session::new(&model).unwrap();
        sess.set_threads(threads).unwrap();
        let mut y = vec![0f32; m * n];
        sess.run(&[&x], &mut [&mut y]).unwrap();
        assert_eq!(y, want, "threads {threads}");
    }
    let gemm = shiftnn_kernels::dispatch::decoded_linear(m, k, n).is_some();
    assert_eq!(model.decoded_bytes() > 0, gemm);
}
