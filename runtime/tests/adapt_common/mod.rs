//! Small models with normalization layers for the adaptation tests.
#![allow(dead_code)]

#[path = "../common/mod.rs"]
mod common;
pub use common::{Builder, Rng};
use shiftnn_kernels::{codes::pack, Bits};
use shiftnn_runtime::graph::{Act, DType, Mode, NormRef, Op, WeightKind, WeightRef};

pub const C: usize = 8;

fn norm(b: &mut Builder, prefix: &str, c: usize, seed: u64) {
    let mut r = Rng(seed);
    let g: Vec<f32> = (0..c).map(|_| r.f32(0.5, 1.5)).collect();
    let be: Vec<f32> = (0..c).map(|_| r.f32(-0.2, 0.2)).collect();
    let m: Vec<f32> = (0..c).map(|_| r.f32(-0.1, 0.1)).collect();
    let v: Vec<f32> = (0..c).map(|_| r.f32(0.5, 2.0)).collect();
    b.f32(&format!("{prefix}.gamma"), &[c], &g);
    b.f32(&format!("{prefix}.beta"), &[c], &be);
    b.f32(&format!("{prefix}.mean"), &[c], &m);
    b.f32(&format!("{prefix}.var"), &[c], &v);
}

/// x [1,4,6,6] -> conv 3x3 (shift weights, fused BN "bn1", ReLU)
/// -> Norm "bn2" -> GAP -> flatten -> softmax over C classes.
/// `seed` changes the weight codes (another fingerprint).
pub fn model(mode: Mode, seed: u64) -> Vec<u8> {
    let int8 = mode == Mode::Int8;
    let dt = if int8 { DType::I8 } else { DType::F32 };
    let mut b = Builder::new(mode);
    let x = b.value("x", &[1, 4, 6, 6], DType::F32, 0.0);
    let mut cur = x;
    if int8 {
        cur = b.value("xq", &[1, 4, 6, 6], DType::I8, 0.02);
        b.node("q", Op::Quantize, &[x], cur);
    }
    let mut r = Rng(seed | 1);
    let codes: Vec<u8> = (0..C * 36).map(|_| r.below(8) as u8).collect();
    let mut packed = vec![0u8; C * Bits::B3.row_bytes(36)];
    pack(&codes, Bits::B3, C, 36, &mut packed);
    b.u8("c.weight", &[C, Bits::B3.row_bytes(36)], &packed);
    b.f32("c.wscale", &[C], &[0.01; C]);
    norm(&mut b, "bn1", C, 11);
    norm(&mut b, "bn2", C, 12);
    let y = b.value("y", &[1, C, 6, 6], dt, 0.05);
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
        norm: Some(NormRef {
            prefix: "bn1".into(),
            eps: 1e-5,
        }),
        act: Act::Relu,
    };
    b.node("c", conv, &[cur], y);
    let n2 = b.value("n2", &[1, C, 6, 6], dt, 0.05);
    b.node(
        "bn2",
        Op::Norm {
            norm: NormRef {
                prefix: "bn2".into(),
                eps: 1e-5,
            },
            act: Act::None,
        },
        &[y],
        n2,
    );
    let p = b.value("p", &[1, C, 1, 1], dt, 0.05);
    b.node("gap", Op::GlobalAvgPool, &[n2], p);
    let f = b.value("f", &[1, C], dt, 0.05);
    b.node("flat", Op::Reshape, &[p], f);
    let out = if int8 {
        let o = b.value("out", &[1, C], DType::F32, 0.0);
        b.node("dq", Op::Dequantize, &[f], o);
        o
    } else {
        f
    };
    let sm = b.value("prob", &[1, C], DType::F32, 0.0);
    b.node("softmax", Op::Softmax { axis: 1 }, &[out], sm);
    b.finish(&[x], &[sm])
}

pub fn input(seed: u64, offset: f32, spread: f32) -> Vec<f32> {
    let mut r = Rng(seed | 1);
    (0..4 * 36)
        .map(|_| offset + r.f32(-spread, spread))
        .collect()
}
