//! End-to-end tests of the `shiftnn` binary on a tiny ONNX model built here
//! with the importer's prost messages. Timings are never asserted.

use prost::Message;
use serde_json::Value;
use shiftnn_converter::npy;
use shiftnn_converter::onnx::proto::{
    attr_type, data_type, AttributeProto, Dimension, GraphProto, ModelProto, NodeProto,
    OperatorSetIdProto, TensorProto, TensorShapeProto, TypeProto, TypeProtoTensor, ValueInfoProto,
};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const IN_SHAPE: [usize; 4] = [1, 1, 6, 6];
const CLASSES: usize = 3;

fn tensor(name: &str, dims: &[i64], data: Vec<f32>) -> TensorProto {
    TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: data_type::FLOAT,
        float_data: data,
        ..Default::default()
    }
}

fn ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: attr_type::INTS,
        ints: v.to_vec(),
        ..Default::default()
    }
}

fn int(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: attr_type::INT,
        i: v,
        ..Default::default()
    }
}

fn node(
    op: &str,
    name: &str,
    inputs: &[&str],
    output: &str,
    attribute: Vec<AttributeProto>,
) -> NodeProto {
    NodeProto {
        op_type: op.into(),
        name: name.into(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.into()],
        attribute,
        ..Default::default()
    }
}

fn value_info(name: &str, dims: &[i64]) -> ValueInfoProto {
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            tensor_type: Some(TypeProtoTensor {
                elem_type: data_type::FLOAT,
                shape: Some(TensorShapeProto {
                    dim: dims
                        .iter()
                        .map(|&d| Dimension {
                            dim_value: Some(d),
                            ..Default::default()
                        })
                        .collect(),
                }),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Deterministic pseudo-random values in [-1, 1).
fn rand(n: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2654435761).wrapping_add(1);
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(1664525).wrapping_add(1013904223);
            (s >> 8) as f32 / (1u32 << 23) as f32 - 1.0
        })
        .collect()
}

/// x[1,1,6,6] -> Conv 3x3 (4) -> Relu -> Conv 3x3 (4, weights exactly
/// ±0.5·2^p) -> Relu -> GlobalAveragePool -> Flatten -> Gemm (3) -> y.
/// With `unsupported`, the second Relu becomes an operator nobody supports.
fn tiny_onnx(unsupported: bool) -> Vec<u8> {
    let w1 = rand(4 * 9, 1);
    // Every row holds 4.0 and 0.5, so 3-bit codes with scale 0.5 are exact.
    let pow = [0.5f32, 1.0, 2.0, 4.0];
    let w2: Vec<f32> = (0..4 * 4 * 9)
        .map(|i| {
            let k = i % 36;
            let m = if k == 0 {
                4.0
            } else if k == 1 {
                0.5
            } else {
                pow[(i * 7 + i / 5) % 4]
            };
            if (i * 13) % 3 == 0 {
                -m
            } else {
                m
            }
        })
        .collect();
    let conv_attrs = || {
        vec![
            ints("kernel_shape", &[3, 3]),
            ints("pads", &[1, 1, 1, 1]),
            ints("strides", &[1, 1]),
        ]
    };
    let nodes = vec![
        node("Conv", "conv1", &["x", "w1"], "c1", conv_attrs()),
        node("Relu", "relu1", &["c1"], "r1", vec![]),
        node("Conv", "conv2", &["r1", "w2", "b2"], "c2", conv_attrs()),
        node(
            if unsupported { "FancyOp" } else { "Relu" },
            "relu2",
            &["c2"],
            "r2",
            vec![],
        ),
        node("GlobalAveragePool", "pool", &["r2"], "g", vec![]),
        node("Flatten", "flatten", &["g"], "f", vec![int("axis", 1)]),
        node(
            "Gemm",
            "fc",
            &["f", "wfc", "bfc"],
            "y",
            vec![int("transB", 1)],
        ),
    ];
    let graph = GraphProto {
        name: "tiny".into(),
        node: nodes,
        initializer: vec![
            tensor("w1", &[4, 1, 3, 3], w1),
            tensor("w2", &[4, 4, 3, 3], w2),
            tensor("b2", &[4], vec![0.1, -0.2, 0.3, 0.0]),
            tensor("wfc", &[CLASSES as i64, 4], rand(CLASSES * 4, 3)),
            tensor("bfc", &[CLASSES as i64], vec![0.01, 0.0, -0.01]),
        ],
        input: vec![value_info("x", &[1, 1, 6, 6])],
        output: vec![value_info("y", &[1, CLASSES as i64])],
        ..Default::default()
    };
    let model = ModelProto {
        ir_version: 8,
        producer_name: "shiftnn-tests".into(),
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: 13,
        }],
        graph: Some(graph),
        ..Default::default()
    };
    model.encode_to_vec()
}

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let f = Fixture {
            dir: tempfile::tempdir().unwrap(),
        };
        std::fs::write(f.path("tiny.onnx"), tiny_onnx(false)).unwrap();
        std::fs::write(f.path("bad.onnx"), tiny_onnx(true)).unwrap();
        let per: usize = IN_SHAPE.iter().product();
        std::fs::write(
            f.path("calib.npy"),
            npy::encode_f32(&[8, 1, 6, 6], &rand(8 * per, 10)).unwrap(),
        )
        .unwrap();
        std::fs::write(
            f.path("x.npy"),
            npy::encode_f32(&[5, 1, 6, 6], &rand(5 * per, 20)).unwrap(),
        )
        .unwrap();
        f
    }
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    fn s(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }
}

fn shiftnn(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_shiftnn"))
        .args(args)
        .output()
        .expect("run shiftnn")
}

fn ok(args: &[&str]) -> String {
    let o = shiftnn(args);
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(
        o.status.success(),
        "shiftnn {args:?} failed ({:?})\nstdout:\n{out}\nstderr:\n{err}",
        o.status.code()
    );
    out.into_owned()
}

/// Runs a command that must fail; returns stderr.
fn fails(args: &[&str]) -> String {
    let o = shiftnn(args);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(
        o.status.code(),
        Some(1),
        "shiftnn {args:?} should exit 1; stderr:\n{err}"
    );
    assert!(
        err.starts_with("error:"),
        "stderr should start with 'error:': {err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    err
}

fn json(args: &[&str]) -> Value {
    let out = ok(args);
    serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("shiftnn {args:?}: not JSON ({e}):\n{out}"))
}

fn convert(f: &Fixture, out: &str, mode: &str, bits: &str) -> String {
    let (input, output, calib) = (f.s("tiny.onnx"), f.s(out), f.s("calib.npy"));
    let mut args = vec![
        "convert", &input, "-o", &output, "--bits", bits, "--mode", mode,
    ];
    if mode == "int8" {
        args.extend(["--calib", &calib]);
    }
    ok(&args)
}

fn read_npy(p: &Path) -> npy::ArrayF32 {
    npy::read_f32(p).unwrap()
}

#[test]
fn help_on_every_command() {
    let top = ok(&["--help"]);
    for cmd in [
        "convert", "check", "inspect", "run", "eval", "bench", "diff",
    ] {
        assert!(top.contains(cmd), "{top}");
        let h = ok(&[cmd, "--help"]);
        assert!(h.contains("Usage: shiftnn"), "{h}");
        assert!(
            h.lines().next().is_some_and(|l| l.len() > 20),
            "{cmd} needs a description:\n{h}"
        );
    }
}

#[test]
fn convert_float_is_lossless_and_inspects() {
    let f = Fixture::new();
    let out = convert(&f, "f.shift", "float", "3");
    assert!(out.contains("conv2") && out.contains("SQNR"), "{out}");
    assert!(out.contains("converted losslessly"), "{out}");
    assert!(out.contains("arena"), "{out}");

    let j = json(&["inspect", &f.s("f.shift"), "--json"]);
    assert_eq!(j["mode"], "float");
    assert_eq!(j["version"], 1);
    assert!(j["fingerprint"].as_str().unwrap().len() == 16);
    assert_eq!(j["inputs"][0]["shape"], serde_json::json!(IN_SHAPE));
    assert!(j["arena_bytes"].as_u64().unwrap() > 0);
    let layers = j["layers"].as_array().unwrap();
    let kernel = |name: &str| {
        layers
            .iter()
            .find(|l| l["name"] == name)
            .map(|l| l["kernel"].as_str().unwrap().to_string())
    };
    assert_eq!(kernel("conv1").as_deref(), Some("scalar/f32"));
    // The shift layer runs the best float kernel this CPU has (its name
    // ends with the family: `avx2/fexp`, `avx512/gemm-fexp`, ...).
    let k2 = kernel("conv2").unwrap();
    assert!(k2 == "scalar/shift-f32" || k2.ends_with("fexp"), "{k2}");
    assert_eq!(kernel("fc").as_deref(), Some("scalar/f32"));
    let conv2 = layers.iter().find(|l| l["name"] == "conv2").unwrap();
    assert_eq!(conv2["weights"], "shift");
    assert_eq!(conv2["bits"], 3);
    assert_eq!(conv2["macs"], 4 * 36 * 36);
    assert!(j["totals"]["macs"].as_u64().unwrap() >= 4 * 36 * 36);

    // --fp16 allows f16 arithmetic: `neonfp16/fexp` on aarch64 CPUs with
    // FEAT_FP16, the same f32 kernel everywhere else.
    let j16 = json(&["inspect", &f.s("f.shift"), "--json", "--fp16"]);
    let k16 = j16["layers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == "conv2")
        .map(|l| l["kernel"].as_str().unwrap().to_string())
        .unwrap();
    if shiftnn_kernels::dispatch::has_fp16() {
        assert_eq!(k16, "neonfp16/fexp");
    } else {
        assert_eq!(k16, k2);
    }

    let text = ok(&["inspect", &f.s("f.shift")]);
    assert!(
        (text.contains("scalar/shift-f32") || text.contains("fexp"))
            && text.contains("fingerprint"),
        "{text}"
    );

    // --no-keep quantizes every layer; the JSON report says so.
    let j = json(&[
        "convert",
        &f.s("tiny.onnx"),
        "-o",
        &f.s("all.shift"),
        "--bits",
        "2",
        "--mode",
        "float",
        "--no-keep",
        "--json",
    ]);
    let layers = j["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 3);
    assert!(
        layers
            .iter()
            .all(|l| l["weights"] == "shift" && l["bits"] == 2),
        "{j}"
    );
    assert!(j["file_bytes"].as_u64().unwrap() > 0 && j["onnx_bytes"].as_u64().unwrap() > 0);
}

#[test]
fn int8_convert_run_eval_bench_diff() {
    let f = Fixture::new();
    let j = json(&[
        "convert",
        &f.s("tiny.onnx"),
        "-o",
        &f.s("i.shift"),
        "--bits",
        "4",
        "--mode",
        "int8",
        "--calib",
        &f.s("calib.npy"),
        "--calib-method",
        "percentile",
        "--percentile",
        "99.9",
        "--json",
    ]);
    assert_eq!(j["mode"], "int8");
    assert_eq!(j["calib_samples"], 8);
    let kept: Vec<&str> = j["layers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["weights"] == "i8")
        .map(|l| l["name"].as_str().unwrap())
        .collect();
    assert_eq!(kept, vec!["conv1", "fc"]);
    convert(&f, "i3.shift", "int8", "3");

    let ins = json(&["inspect", &f.s("i.shift"), "--json"]);
    assert_eq!(ins["mode"], "int8");
    let kernels: Vec<&str> = ins["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["kernel"].as_str().unwrap())
        .collect();
    assert!(
        kernels
            .iter()
            .any(|k| *k == "scalar/w8-i8" || k.ends_with("/w8"))
            && kernels.iter().any(|k| *k == "scalar/shift-i8"
                || k.ends_with("/dot")
                || k.ends_with("/shift")
                || k.ends_with("-dot")),
        "{kernels:?}"
    );
    // The int8 input's quantize names the level of its vectorized kernel.
    assert_eq!(
        ins["layers"][0]["kernel"].as_str(),
        Some(shiftnn_kernels::elementwise::kernel_name()),
        "{kernels:?}"
    );

    // run: (5, 1, 6, 6) -> (5, 3); thread count does not change results.
    ok(&[
        "run",
        &f.s("i.shift"),
        "--input",
        &f.s("x.npy"),
        "--output",
        &f.s("y1.npy"),
        "--threads",
        "1",
    ]);
    ok(&[
        "run",
        &f.s("i.shift"),
        "-i",
        &f.s("x.npy"),
        "-o",
        &f.s("y2.npy"),
        "--threads",
        "2",
    ]);
    let (y1, y2) = (read_npy(&f.path("y1.npy")), read_npy(&f.path("y2.npy")));
    assert_eq!(y1.shape, vec![5, CLASSES]);
    assert_eq!(y1, y2);
    assert!(y1.data.iter().all(|v| v.is_finite()));

    // eval against the float model, on labels that are the float model's
    // own predictions: reference top-1 must be 1.
    let per: usize = IN_SHAPE.iter().product();
    let n = 6;
    let x = rand(n * per, 30);
    let g = shiftnn_converter::onnx::load_file(f.path("tiny.onnx")).unwrap();
    let labels: Vec<i64> = x
        .chunks(per)
        .map(|xi| {
            let y = &shiftnn_converter::reference::run(&g, &[("x", xi)]).unwrap()[0];
            (0..y.len()).fold(0, |b, i| if y[i] > y[b] { i } else { b }) as i64
        })
        .collect();
    npy::write_npz(
        f.path("d.npz"),
        &[
            ("x", npy::encode_f32(&[n, 1, 6, 6], &x).unwrap()),
            ("y", npy::encode_i64(&[n], &labels).unwrap()),
        ],
    )
    .unwrap();
    let e = json(&[
        "eval",
        &f.s("i.shift"),
        "--data",
        &f.s("d.npz"),
        "--reference",
        &f.s("tiny.onnx"),
        "--json",
        "--threads",
        "2",
    ]);
    assert_eq!(e["n"], n);
    assert_eq!(e["reference_top1"], 1.0);
    let top1 = e["top1"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&top1));
    assert_eq!(
        e["agreement"].as_f64().unwrap(),
        top1,
        "labels are the reference's predictions"
    );
    let e1 = json(&[
        "eval",
        &f.s("i.shift"),
        "--data",
        &f.s("d.npz"),
        "--json",
        "--threads",
        "1",
        "--limit",
        "4",
    ]);
    assert_eq!(e1["n"], 4);
    assert!(
        e1.get("reference_top1").is_none() && e1.get("agreement").is_none(),
        "{e1}"
    );
    let text = ok(&[
        "eval",
        &f.s("i.shift"),
        "--data",
        &f.s("d.npz"),
        "--reference",
        &f.s("tiny.onnx"),
    ]);
    assert!(
        text.contains("agreement") && text.contains("top-1"),
        "{text}"
    );

    // bench: keys only, never timings.
    let b = json(&[
        "bench",
        &f.s("i.shift"),
        "--json",
        "--iters",
        "3",
        "--warmup",
        "1",
    ]);
    for k in [
        "p50_ms",
        "p90_ms",
        "p99_ms",
        "mean_ms",
        "peak_rss_bytes",
        "arena_bytes",
        "layers",
    ] {
        assert!(b.get(k).is_some(), "bench JSON lacks {k}: {b}");
    }
    assert!(b["p50_ms"].as_f64().unwrap() >= 0.0);
    assert_eq!(b["arena_bytes"], ins["arena_bytes"]);
    let layers = b["layers"].as_array().unwrap();
    assert_eq!(layers.len(), ins["layers"].as_array().unwrap().len());
    for l in layers {
        for k in ["name", "op", "kernel", "macs", "median_us", "share_pct"] {
            assert!(l.get(k).is_some(), "layer lacks {k}: {l}");
        }
    }
    let text = ok(&[
        "bench",
        &f.s("i.shift"),
        "--iters",
        "2",
        "--warmup",
        "0",
        "--threads",
        "2",
    ]);
    assert!(
        text.contains("p99")
            && (text.contains("scalar/shift-i8")
                || text.contains("/dot")
                || text.contains("/shift")
                || text.contains("/gemm-dot")),
        "{text}"
    );

    // diff: every matched activation and the final output.
    let d = json(&[
        "diff",
        &f.s("tiny.onnx"),
        &f.s("i.shift"),
        "--input",
        &f.s("x.npy"),
        "--json",
    ]);
    let names: Vec<&str> = d["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["node"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"conv2") && names.contains(&"fc"),
        "{names:?}"
    );
    assert_eq!(d["output"]["name"], "y");
    assert!(d["output"]["max_abs_err"].as_f64().unwrap().is_finite());
    let text = ok(&[
        "diff",
        &f.s("tiny.onnx"),
        &f.s("i.shift"),
        "-i",
        &f.s("x.npy"),
    ]);
    assert!(text.contains("SQNR") && text.contains("output y"), "{text}");
}

#[test]
fn check_reports_every_node() {
    let f = Fixture::new();
    let out = ok(&["check", &f.s("tiny.onnx")]);
    assert!(out.contains("all 7 nodes supported"), "{out}");
    let o = shiftnn(&["check", &f.s("bad.onnx")]);
    assert_eq!(o.status.code(), Some(1));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("FancyOp") && out.contains("UNSUPPORTED") && out.contains("conv2"),
        "{out}"
    );
    assert!(String::from_utf8_lossy(&o.stderr).starts_with("error:"));
    let o = shiftnn(&["check", &f.s("bad.onnx"), "--json"]);
    assert_eq!(o.status.code(), Some(1));
    let j: Value = serde_json::from_slice(&o.stdout).unwrap();
    let nodes = j["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 7);
    let bad: Vec<&Value> = nodes.iter().filter(|n| n["supported"] == false).collect();
    assert_eq!(bad.len(), 1);
    assert_eq!(bad[0]["op_type"], "FancyOp");
    assert!(bad[0]["reason"].is_string());
    // An unsupported model does not convert either.
    let err = fails(&[
        "convert",
        &f.s("bad.onnx"),
        "-o",
        &f.s("b.shift"),
        "--bits",
        "3",
        "--mode",
        "float",
    ]);
    assert!(err.contains("FancyOp"), "{err}");
}

#[test]
fn clear_errors() {
    let f = Fixture::new();
    let err = fails(&[
        "convert",
        &f.s("missing.onnx"),
        "-o",
        &f.s("o.shift"),
        "--bits",
        "3",
        "--mode",
        "float",
    ]);
    assert!(err.contains("missing.onnx"), "{err}");
    let err = fails(&[
        "convert",
        &f.s("tiny.onnx"),
        "-o",
        &f.s("o.shift"),
        "--bits",
        "5",
        "--mode",
        "float",
    ]);
    assert!(err.contains("--bits"), "{err}");
    let err = fails(&[
        "convert",
        &f.s("tiny.onnx"),
        "-o",
        &f.s("o.shift"),
        "--bits",
        "3",
        "--mode",
        "int8",
    ]);
    assert!(err.contains("--calib"), "{err}");
    let err = fails(&[
        "convert",
        &f.s("tiny.onnx"),
        "-o",
        &f.s("o.shift"),
        "--bits",
        "3",
        "--mode",
        "float",
        "--keep",
        "nope",
    ]);
    assert!(err.contains("nope"), "{err}");
    // Calibration data of the wrong shape, or not an .npy at all.
    std::fs::write(
        f.path("wrong.npy"),
        npy::encode_f32(&[2, 5], &[0.0; 10]).unwrap(),
    )
    .unwrap();
    let err = fails(&[
        "convert",
        &f.s("tiny.onnx"),
        "-o",
        &f.s("o.shift"),
        "--bits",
        "3",
        "--mode",
        "int8",
        "--calib",
        &f.s("wrong.npy"),
    ]);
    assert!(
        err.contains("wrong.npy") && err.contains("(N, 1, 6, 6)"),
        "{err}"
    );
    std::fs::write(f.path("junk.npy"), b"\x93NUMPY\x01\x00\xff\x00{'descr'").unwrap();
    let err = fails(&[
        "convert",
        &f.s("tiny.onnx"),
        "-o",
        &f.s("o.shift"),
        "--bits",
        "3",
        "--mode",
        "int8",
        "--calib",
        &f.s("junk.npy"),
    ]);
    assert!(err.contains("junk.npy"), "{err}");

    convert(&f, "f.shift", "float", "3");
    let err = fails(&["inspect", &f.s("nope.shift")]);
    assert!(err.contains("nope.shift"), "{err}");
    let err = fails(&["inspect", &f.s("tiny.onnx")]);
    assert!(err.contains("tiny.onnx"), "{err}");
    let err = fails(&[
        "run",
        &f.s("f.shift"),
        "-i",
        &f.s("junk.npy"),
        "-o",
        &f.s("y.npy"),
    ]);
    assert!(err.contains("junk.npy"), "{err}");
    let err = fails(&[
        "run",
        &f.s("f.shift"),
        "-i",
        &f.s("wrong.npy"),
        "-o",
        &f.s("y.npy"),
    ]);
    assert!(err.contains("wrong.npy"), "{err}");
    let err = fails(&["eval", &f.s("f.shift"), "--data", &f.s("x.npy")]);
    assert!(err.contains("x.npy"), "{err}");
    npy::write_npz(
        f.path("nolabels.npz"),
        &[("x", npy::encode_f32(&[1, 1, 6, 6], &[0.0; 36]).unwrap())],
    )
    .unwrap();
    let err = fails(&["eval", &f.s("f.shift"), "--data", &f.s("nolabels.npz")]);
    assert!(err.contains("nolabels.npz") && err.contains("'y'"), "{err}");
    let err = fails(&["bench", &f.s("nope.shift")]);
    assert!(err.contains("nope.shift"), "{err}");
    let err = fails(&[
        "diff",
        &f.s("tiny.onnx"),
        &f.s("f.shift"),
        "-i",
        &f.s("missing.npy"),
    ]);
    assert!(err.contains("missing.npy"), "{err}");
    let err = fails(&["frobnicate"]);
    assert!(err.contains("frobnicate"), "{err}");
}
