//! Builds small `.shift` models by hand, so the cloud tests need neither
//! the converter nor data files. The builder itself is the runtime's test
//! builder, shared by path rather than copied.
#![allow(dead_code)]

#[path = "../../../runtime/tests/common/mod.rs"]
mod base;
pub use base::{Builder, Rng};

use shiftnn_runtime::graph::{Act, DType, Mode, NormRef, WeightKind, WeightRef};
use shiftnn_runtime::kernels::{codes, Bits};

/// Add `prefix.{gamma,beta,mean,var}` with random, BN-like values.
pub fn norm_tensors(b: &mut Builder, r: &mut Rng, prefix: &str, c: usize) -> NormRef {
    let g: Vec<f32> = (0..c).map(|_| r.f32(0.5, 1.5)).collect();
    let be: Vec<f32> = (0..c).map(|_| r.f32(-0.3, 0.3)).collect();
    let m: Vec<f32> = (0..c).map(|_| r.f32(-0.2, 0.2)).collect();
    let v: Vec<f32> = (0..c).map(|_| r.f32(0.5, 2.0)).collect();
    b.f32(&format!("{prefix}.gamma"), &[c], &g);
    b.f32(&format!("{prefix}.beta"), &[c], &be);
    b.f32(&format!("{prefix}.mean"), &[c], &m);
    b.f32(&format!("{prefix}.var"), &[c], &v);
    NormRef {
        prefix: prefix.into(),
        eps: 1e-5,
    }
}

/// Random shift weights (`bits`), packed, with a channel scale.
pub fn shift_weights(
    b: &mut Builder,
    r: &mut Rng,
    name: &str,
    c_out: usize,
    k: usize,
    bits: u8,
) -> WeightRef {
    let bb = Bits::new(bits as u32).unwrap();
    let cs: Vec<u8> = (0..c_out * k).map(|_| r.below(1 << bits) as u8).collect();
    let mut packed = vec![0u8; c_out * bb.row_bytes(k)];
    codes::pack(&cs, bb, c_out, k, &mut packed);
    b.u8(name, &[c_out, bb.row_bytes(k)], &packed);
    let s: Vec<f32> = (0..c_out)
        .map(|_| r.f32(0.5, 1.0) / (k as f32 * 4.0))
        .collect();
    b.f32(&format!("{name}.scale"), &[c_out], &s);
    WeightRef {
        kind: WeightKind::Shift,
        bits,
        tensor: name.into(),
        scale: format!("{name}.scale"),
    }
}

/// Random f32 weights with a channel scale.
pub fn f32_weights(b: &mut Builder, r: &mut Rng, name: &str, c_out: usize, k: usize) -> WeightRef {
    let w: Vec<f32> = (0..c_out * k).map(|_| r.f32(-1.0, 1.0)).collect();
    b.f32(name, &[c_out, k], &w);
    let s: Vec<f32> = (0..c_out).map(|_| r.f32(0.5, 1.5) / k as f32).collect();
    b.f32(&format!("{name}.scale"), &[c_out], &s);
    WeightRef {
        kind: WeightKind::F32,
        bits: 0,
        tensor: name.into(),
        scale: format!("{name}.scale"),
    }
}

/// A float-mode graph using every op the student emulates (except
/// quantize/dequantize), with four normalization layers; 2x6x6 input,
/// 5 classes, softmax output.
pub fn every_op_model(seed: u64) -> Vec<u8> {
    use shiftnn_runtime::graph::Op;
    let mut r = Rng(seed);
    let mut b = Builder::new(Mode::Float);
    let f = DType::F32;
    let x = b.value("x", &[1, 2, 6, 6], f, 0.0);
    let v1 = b.value("v1", &[1, 4, 6, 6], f, 0.0);
    let v2 = b.value("v2", &[1, 4, 3, 3], f, 0.0);
    let v3 = b.value("v3", &[1, 4, 3, 3], f, 0.0);
    let v4 = b.value("v4", &[1, 4, 3, 3], f, 0.0);
    let v5 = b.value("v5", &[1, 4, 3, 3], f, 0.0);
    let v5b = b.value("v5b", &[1, 4, 3, 3], f, 0.0);
    let v6 = b.value("v6", &[1, 4, 3, 3], f, 0.0);
    let v7 = b.value("v7", &[1, 4, 2, 2], f, 0.0);
    let v8 = b.value("v8", &[1, 4, 4, 4], f, 0.0);
    let v9 = b.value("v9", &[1, 4, 1, 1], f, 0.0);
    let v10 = b.value("v10", &[1, 4, 1, 1], f, 0.0);
    let v11 = b.value("v11", &[1, 8, 1, 1], f, 0.0);
    let v12 = b.value("v12", &[1, 8], f, 0.0);
    let v13 = b.value("v13", &[1, 5], f, 0.0);
    let v14 = b.value("v14", &[1, 5], f, 0.0);
    let n1 = norm_tensors(&mut b, &mut r, "n1", 4);
    let w1 = shift_weights(&mut b, &mut r, "w1", 4, 2 * 9, 4);
    let bias: Vec<f32> = (0..4).map(|_| r.f32(-0.1, 0.1)).collect();
    b.f32("b1", &[4], &bias);
    b.node(
        "conv1",
        Op::Conv {
            kernel: [3, 3],
            strides: [1, 1],
            pads: [1, 1, 1, 1],
            dilations: [1, 1],
            groups: 1,
            weight: w1,
            bias: Some("b1".into()),
            norm: Some(n1),
            act: Act::Relu,
        },
        &[x],
        v1,
    );
    let n2 = norm_tensors(&mut b, &mut r, "n2", 4);
    let w2 = f32_weights(&mut b, &mut r, "w2", 4, 2 * 9);
    b.node(
        "conv2",
        Op::Conv {
            kernel: [3, 3],
            strides: [2, 2],
            pads: [1, 1, 1, 1],
            dilations: [1, 1],
            groups: 2,
            weight: w2,
            bias: None,
            norm: Some(n2),
            act: Act::None,
        },
        &[v1],
        v2,
    );
    let w3 = f32_weights(&mut b, &mut r, "w3", 4, 4);
    b.node(
        "shortcut",
        Op::Conv {
            kernel: [1, 1],
            strides: [2, 2],
            pads: [0; 4],
            dilations: [1, 1],
            groups: 1,
            weight: w3,
            bias: None,
            norm: None,
            act: Act::None,
        },
        &[v1],
        v3,
    );
    b.node("add", Op::Add { act: Act::Relu }, &[v2, v3], v4);
    let n3 = norm_tensors(&mut b, &mut r, "n3", 4);
    b.node(
        "norm",
        Op::Norm {
            norm: n3,
            act: Act::Clip { lo: -1.0, hi: 3.0 },
        },
        &[v4],
        v5,
    );
    b.node(
        "leaky",
        Op::Act {
            act: Act::LeakyRelu { alpha: 0.1 },
        },
        &[v5],
        v5b,
    );
    b.node(
        "act",
        Op::Act {
            act: Act::HardSwish,
        },
        &[v5b],
        v6,
    );
    b.node(
        "maxpool",
        Op::MaxPool {
            kernel: [2, 2],
            strides: [1, 1],
            pads: [0; 4],
            dilations: [1, 1],
        },
        &[v6],
        v7,
    );
    b.node(
        "avgpool",
        Op::AvgPool {
            kernel: [2, 2],
            strides: [1, 1],
            pads: [1, 1, 1, 1],
            count_include_pad: false,
        },
        &[v6],
        v8,
    );
    b.node("gap1", Op::GlobalAvgPool, &[v7], v9);
    b.node("gap2", Op::GlobalAvgPool, &[v8], v10);
    b.node("concat", Op::Concat { axis: 1 }, &[v9, v10], v11);
    b.node("flatten", Op::Reshape, &[v11], v12);
    let n4 = norm_tensors(&mut b, &mut r, "n4", 5);
    let w4 = shift_weights(&mut b, &mut r, "w4", 5, 8, 3);
    b.node(
        "fc",
        Op::Linear {
            weight: w4,
            bias: None,
            norm: Some(n4),
            act: Act::None,
        },
        &[v12],
        v13,
    );
    b.node("softmax", Op::Softmax { axis: 1 }, &[v13], v14);
    b.finish(&[x], &[v14])
}

/// Random inputs.
pub fn inputs(r: &mut Rng, n: usize, len: usize) -> Vec<Vec<f32>> {
    (0..n)
        .map(|_| (0..len).map(|_| r.f32(-1.0, 1.0)).collect())
        .collect()
}
