//! Hostile and broken model files: every one is an error that names the
//! problem, never a panic or an out-of-bounds read.

mod common;
use common::{Builder, Rng};
use safetensors::Dtype;
use shiftnn_kernels::{codes::pack, Bits};
use shiftnn_runtime::format::{self, TensorData};
use shiftnn_runtime::graph::{Act, DType, Graph, Mode, Op, WeightKind, WeightRef};
use shiftnn_runtime::{Error, Model, Session};
use std::borrow::Cow;

fn base() -> (Builder, Vec<usize>, Vec<usize>) {
    let mut b = Builder::new(Mode::Int8);
    let x = b.value("x", &[1, 2, 5, 5], DType::F32, 0.0);
    let xq = b.value("xq", &[1, 2, 5, 5], DType::I8, 0.05);
    b.node("q", Op::Quantize, &[x], xq);
    let codes: Vec<u8> = (0..4 * 18).map(|i| (i * 3 % 8) as u8).collect();
    let mut packed = vec![0u8; 4 * Bits::B3.row_bytes(18)];
    pack(&codes, Bits::B3, 4, 18, &mut packed);
    b.u8("c.weight", &[4, Bits::B3.row_bytes(18)], &packed);
    b.f32("c.wscale", &[4], &[0.02, 0.03, 0.01, 0.05]);
    b.f32("c.bias", &[4], &[0.1, -0.1, 0.0, 0.2]);
    for n in ["gamma", "beta", "mean", "var"] {
        b.f32(&format!("bn.{n}"), &[4], &[1.0, 0.5, 0.25, 2.0]);
    }
    let y = b.value("y", &[1, 4, 5, 5], DType::I8, 0.1);
    b.node(
        "c",
        Op::Conv {
            kernel: [3, 3],
            strides: [1, 1],
            pads: [1; 4],
            dilations: [1, 1],
            groups: 1,
            weight: WeightRef {
                kind: WeightKind::Shift,
                bits: 3,
                tensor: "c.weight".into(),
                scale: "c.wscale".into(),
            },
            bias: Some("c.bias".into()),
            norm: Some(shiftnn_runtime::graph::NormRef {
                prefix: "bn".into(),
                eps: 1e-5,
            }),
            act: Act::Relu,
        },
        &[xq],
        y,
    );
    let o = b.value("out", &[1, 4, 5, 5], DType::F32, 0.0);
    b.node("dq", Op::Dequantize, &[y], o);
    (b, vec![x], vec![o])
}

fn valid() -> Vec<u8> {
    let (b, i, o) = base();
    b.finish(&i, &o)
}

fn load(bytes: &[u8]) -> Result<(), Error> {
    // Copy into an aligned buffer so alignment is not the failure.
    let m = Model::from_vec(bytes)?;
    let mut s = Session::new(&m)?;
    let x = vec![0.5f32; m.input_len(0)];
    let mut y = vec![0f32; m.output_len(0)];
    s.run(&[&x], &mut [&mut y])
}

fn with_graph(f: impl FnOnce(&mut Graph)) -> Result<(), Error> {
    let (b, i, o) = base();
    let mut g = b.graph(&i, &o);
    f(&mut g);
    let bytes = format::write(&g, &b.tensors).unwrap();
    load(&bytes)
}

fn with_tensors(f: impl FnOnce(&mut Vec<TensorData<'static>>)) -> Result<(), Error> {
    let (mut b, i, o) = base();
    f(&mut b.tensors);
    load(&b.finish(&i, &o))
}

fn expect_err(r: Result<(), Error>, needle: &str) {
    match r {
        Ok(()) => panic!("expected an error mentioning {needle:?}, got Ok"),
        Err(e) => {
            let msg = e.to_string();
            assert!(
                msg.contains(needle),
                "error {msg:?} does not mention {needle:?}"
            );
        }
    }
}

#[test]
fn valid_model_loads_and_runs() {
    load(&valid()).unwrap();
}

#[test]
fn every_truncation_is_an_error() {
    let v = valid();
    for n in 0..v.len() {
        assert!(load(&v[..n]).is_err(), "truncated to {n} bytes loaded");
    }
}

#[test]
fn random_corruption_never_panics() {
    let v = valid();
    let mut rng = Rng(0x5eed);
    let mut ok = 0;
    for _ in 0..3000 {
        let mut m = v.clone();
        for _ in 0..1 + rng.below(4) {
            let i = rng.below(m.len() as u64) as usize;
            m[i] = rng.next() as u8;
        }
        if load(&m).is_ok() {
            ok += 1;
        }
    }
    // Flips inside weight data keep the file valid; flips in the header
    // must not. Both kinds happen.
    assert!(ok > 0 && ok < 3000, "{ok}");
}

#[test]
fn header_problems() {
    let v = valid();
    let mut huge = v.clone();
    huge[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    expect_err(load(&huge), "limit");
    let mut bad_json = v.clone();
    bad_json[8] = b'[';
    expect_err(load(&bad_json), "container");
    expect_err(load(b"short"), "shorter than");
    // A plain safetensors file without our metadata.
    let plain = format_plain(&[("a", "U8", vec![64], 0, 64)], 64);
    expect_err(load(&plain), "not a .shift file");
}

/// A raw safetensors file with the given entries (name, dtype, shape,
/// start, end) and `data_len` zero bytes; header padded so data starts at a
/// 64-byte boundary.
fn format_plain(entries: &[(&str, &str, Vec<usize>, usize, usize)], data_len: usize) -> Vec<u8> {
    let mut parts = Vec::new();
    for (n, d, s, a, b) in entries {
        let s: Vec<String> = s.iter().map(|x| x.to_string()).collect();
        parts.push(format!(
            "\"{n}\":{{\"dtype\":\"{d}\",\"shape\":[{}],\"data_offsets\":[{a},{b}]}}",
            s.join(",")
        ));
    }
    let mut h = format!("{{{}}}", parts.join(","));
    while (8 + h.len()) % 64 != 0 {
        h.push(' ');
    }
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(h.as_bytes());
    out.extend(std::iter::repeat_n(0u8, data_len));
    out
}

#[test]
fn overlapping_and_out_of_range_offsets() {
    let overlap = format_plain(
        &[("a", "U8", vec![64], 0, 64), ("b", "U8", vec![64], 32, 96)],
        96,
    );
    expect_err(load(&overlap), "container");
    let beyond = format_plain(&[("a", "U8", vec![128], 0, 128)], 64);
    expect_err(load(&beyond), "container");
}

#[test]
fn misaligned_tensor_is_rejected() {
    // A valid safetensors layout whose second tensor starts at offset 3.
    let mis = format_plain(
        &[("a", "U8", vec![3], 0, 3), ("b", "U8", vec![61], 3, 64)],
        64,
    );
    expect_err(load(&mis), "aligned");
}

#[test]
fn misaligned_buffer_is_an_error_not_a_bad_read() {
    let v = valid();
    let mut shifted = vec![0u8; v.len() + 1];
    shifted[1..].copy_from_slice(&v);
    // Find a start that is 1 past a 4-byte boundary.
    let start = (0..4)
        .find(|&o| (shifted[o..].as_ptr() as usize) % 4 == 1)
        .unwrap_or(1);
    let mut buf = vec![0u8; v.len() + 8];
    buf[start..start + v.len()].copy_from_slice(&v);
    let slice = &buf[start..start + v.len()];
    if !(slice.as_ptr() as usize).is_multiple_of(4) {
        let e = Model::from_bytes(slice).unwrap_err();
        assert!(matches!(e, Error::Misaligned { .. }), "{e}");
    }
    // The owned copy always works.
    Model::from_vec(slice).unwrap();
}

#[test]
fn wrong_tensor_dtype_shape_or_missing() {
    expect_err(
        with_tensors(|t| {
            let i = t.iter().position(|t| t.name == "c.wscale").unwrap();
            t[i].dtype = Dtype::I32;
        }),
        "c.wscale",
    );
    expect_err(
        with_tensors(|t| {
            let i = t.iter().position(|t| t.name == "c.bias").unwrap();
            t[i] = TensorData {
                name: "c.bias".into(),
                dtype: Dtype::F32,
                shape: vec![2],
                data: Cow::Owned(vec![0; 8]),
            };
        }),
        "c.bias",
    );
    expect_err(with_tensors(|t| t.retain(|t| t.name != "bn.var")), "bn.var");
    expect_err(
        with_tensors(|t| t.retain(|t| t.name != "c.weight")),
        "c.weight",
    );
}

#[test]
fn graph_problems() {
    expect_err(with_graph(|g| g.version = 99), "version 99");
    expect_err(with_graph(|g| g.nodes[1].inputs[0] = 77), "out of range");
    // A cycle: the conv reads the value it writes.
    expect_err(
        with_graph(|g| g.nodes[1].inputs[0] = g.nodes[1].output),
        "cycle",
    );
    // Nodes out of order.
    expect_err(with_graph(|g| g.nodes.swap(0, 1)), "not produced before");
    expect_err(
        with_graph(|g| g.values[2].shape = vec![1 << 20, 1 << 20, 1 << 10]),
        "limit",
    );
    expect_err(
        with_graph(|g| g.values[2].shape = vec![1, 4, 4, 5]),
        "geometry",
    );
    expect_err(with_graph(|g| g.values[1].scale = -1.0), "scale");
    // NaN is not representable in JSON: it arrives as null.
    expect_err(with_graph(|g| g.values[1].scale = f32::NAN), "metadata");
    expect_err(with_graph(|g| g.values[1].scale = 0.0), "scale");
    expect_err(
        with_graph(|g| {
            if let Op::Conv { groups, .. } = &mut g.nodes[1].op {
                *groups = 3
            }
        }),
        "geometry",
    );
    expect_err(
        with_graph(|g| {
            if let Op::Conv { weight, .. } = &mut g.nodes[1].op {
                weight.bits = 9
            }
        }),
        "bits",
    );
    expect_err(
        with_graph(|g| {
            if let Op::Conv { weight, .. } = &mut g.nodes[1].op {
                weight.kind = WeightKind::F32
            }
        }),
        "mode",
    );
    expect_err(with_graph(|g| g.arena_bytes += 64), "arena");
    expect_err(with_graph(|g| g.outputs = vec![2]), "must be f32");
    expect_err(
        with_graph(|g| g.fingerprint = "0123456789abcdef".into()),
        "fingerprint",
    );
}

#[test]
fn wrong_input_sizes_are_errors() {
    let v = valid();
    let m = Model::from_vec(&v).unwrap();
    let mut s = Session::new(&m).unwrap();
    let mut y = vec![0f32; m.output_len(0)];
    expect_err(s.run(&[&[0.0; 3]], &mut [&mut y]), "input 0 has 3 values");
    let x = vec![0f32; m.input_len(0)];
    expect_err(s.run(&[&x, &x], &mut [&mut y]), "1 input");
    expect_err(s.run(&[&x], &mut [&mut [0f32; 2]]), "output 0 has 2 values");
}

#[test]
fn roundtrip_preserves_graph_and_tensors() {
    let (b, i, o) = base();
    let g = b.graph(&i, &o);
    let bytes = format::write(&g, &b.tensors).unwrap();
    let m = Model::from_bytes(&bytes).unwrap_or_else(|_| Model::from_vec(&bytes).unwrap());
    assert_eq!(m.graph(), &g);
    for t in &b.tensors {
        let r = m.tensor(&t.name).unwrap();
        assert_eq!(r.dtype, t.dtype);
        assert_eq!(r.shape, &t.shape[..]);
        assert_eq!(r.bytes, &t.data[..]);
    }
    // Every tensor starts on a 64-byte boundary of the file.
    for (name, _, _, range) in m.tensors().iter() {
        assert_eq!(range.start % 64, 0, "{name}");
    }
    // The file is standard safetensors.
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert!(st.names().contains(&"c.weight"));
}
