//! End to end through the converter and the runtime (not the reference
//! executor): ONNX fixtures converted with every weighted layer kept in
//! f32 must reproduce ONNX Runtime's outputs in the runtime's float mode;
//! shift conversions must be close to the float model; int8 conversion of
//! the bundled model must agree with its float version on most samples.

use shiftnn_converter::lower::{convert, CalibData, CalibMethod, ConvertOptions};
use shiftnn_converter::{ir, npy, onnx};
use shiftnn_kernels::Bits;
use shiftnn_runtime::{Mode, Model, Session};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn all_weighted(g: &ir::Graph) -> Vec<String> {
    g.nodes
        .iter()
        .filter(|n| matches!(n.op, ir::Op::Conv { .. } | ir::Op::Linear { .. }))
        .map(|n| n.name.clone())
        .collect()
}

fn run_model(bytes: &[u8], x: &[f32]) -> Vec<f32> {
    let m = Model::from_vec(bytes).unwrap();
    let mut s = Session::new(&m).unwrap();
    let mut y = vec![0f32; m.output_len(0)];
    s.run(&[x], &mut [&mut y]).unwrap();
    y
}

fn opts(
    bits: Bits,
    mode: Mode,
    keep: Option<Vec<String>>,
    calib: Option<CalibData>,
) -> ConvertOptions<'static> {
    ConvertOptions {
        bits,
        mode,
        keep,
        calib,
        calib_method: CalibMethod::MinMax,
        progress: None,
    }
}

/// Every fixture with ORT outputs: convert keeping all weighted layers in
/// f32 (so only the runtime's float executor is under test), run each batch
/// item, compare with a stated bound.
#[test]
fn float_runtime_matches_onnxruntime_on_fixtures() {
    let dir = root().join("tests/fixtures/onnx");
    let mut checked = 0;
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .expect("fixtures")
        .flatten()
        .map(|e| e.path())
        .collect();
    entries.sort();
    for p in entries {
        if p.extension().and_then(|e| e.to_str()) != Some("onnx") {
            continue;
        }
        let stem = p.file_stem().unwrap().to_str().unwrap().to_string();
        let (inp, outp) = (
            dir.join(format!("{stem}.input.npy")),
            dir.join(format!("{stem}.output.npy")),
        );
        if !inp.exists() || !outp.exists() {
            continue;
        }
        let g = onnx::load_file(&p).unwrap_or_else(|e| panic!("{stem}: {e}"));
        if g.inputs.len() != 1 || g.outputs.len() != 1 {
            continue;
        }
        let (bytes, _) = convert(
            &g,
            &opts(Bits::B4, Mode::Float, Some(all_weighted(&g)), None),
        )
        .unwrap_or_else(|e| panic!("{stem}: {e:#}"));
        let x = npy::read_f32(&inp).unwrap();
        let y = npy::read_f32(&outp).unwrap();
        let n = x.shape.first().copied().unwrap_or(1).max(1);
        let (xl, yl) = (x.data.len() / n, y.data.len() / n);
        for i in 0..n {
            let got = run_model(&bytes, &x.data[i * xl..(i + 1) * xl]);
            let want = &y.data[i * yl..(i + 1) * yl];
            assert_eq!(got.len(), want.len(), "{stem}");
            let scale = want.iter().fold(1f32, |m, v| m.max(v.abs()));
            for (a, b) in got.iter().zip(want) {
                assert!(
                    (a - b).abs() <= 1e-4 * scale,
                    "{stem} item {i}: runtime {a} vs ORT {b}"
                );
            }
        }
        checked += 1;
    }
    assert!(checked >= 5, "only {checked} fixtures compared");
}

fn fmnist() -> (ir::Graph, npy::ArrayF32, npy::ArrayF32) {
    let g = onnx::load_file(root().join("examples/fmnist/fmnist_fp32.onnx")).unwrap();
    let x = npy::read_f32(root().join("tests/fixtures/onnx/fmnist.input.npy")).unwrap();
    let y = npy::read_f32(root().join("tests/fixtures/onnx/fmnist.output.npy")).unwrap();
    (g, x, y)
}

fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &x)| {
            if x > bv {
                (i, x)
            } else {
                (bi, bv)
            }
        })
        .0
}

#[test]
fn fmnist_conversions_track_the_float_model() {
    let (g, x, y) = fmnist();
    let n = x.shape[0];
    let (xl, yl) = (x.data.len() / n, y.data.len() / n);
    // Calibrate on the fixture images themselves (tests must not need the
    // data set); accuracy on the real test split is the CLI's job.
    let calib = CalibData {
        x: x.data.clone(),
        n,
    };
    for (bits, mode, min_agree) in [
        (Bits::B4, Mode::Float, n - 1),
        (Bits::B4, Mode::Int8, n - 2),
        (Bits::B3, Mode::Float, n - 3),
        (Bits::B3, Mode::Int8, n - 3),
    ] {
        let (bytes, report) = convert(&g, &opts(bits, mode, None, Some(calib.clone()))).unwrap();
        assert!(report.layers.iter().any(|l| l.weights == "shift"));
        let mut agree = 0;
        for i in 0..n {
            let got = run_model(&bytes, &x.data[i * xl..(i + 1) * xl]);
            agree += (argmax(&got) == argmax(&y.data[i * yl..(i + 1) * yl])) as usize;
        }
        assert!(
            agree >= min_agree,
            "{bits:?} {mode:?}: top-1 agrees on {agree}/{n}"
        );
    }
}

/// Power-of-two weights (what DenseShift training exports) convert
/// losslessly, and the float-mode runtime then equals the float model up to
/// summation order.
#[test]
fn exact_shift_weights_convert_losslessly() {
    let (mut g, x, _) = fmnist();
    let bits = Bits::B3;
    let keep: Vec<String> = shiftnn_converter::lower::default_keep(&g);
    for node in g.nodes.iter_mut().filter(|n| !keep.contains(&n.name)) {
        if let ir::Op::Conv { weight, .. } | ir::Op::Linear { weight, .. } = &mut node.op {
            let rows = weight.shape[0];
            let k = weight.data.len() / rows;
            let q = shiftnn_converter::quantize::quantize_shift(&weight.data, rows, k, bits);
            for r in 0..rows {
                for i in 0..k {
                    weight.data[r * k + i] = q.scales[r] * bits.value(q.codes[r * k + i]) as f32;
                }
            }
        }
    }
    let (bytes, report) = convert(&g, &opts(bits, Mode::Float, None, None)).unwrap();
    for l in report.layers.iter().filter(|l| l.weights == "shift") {
        assert!(
            l.lossless && l.sqnr_db.is_none(),
            "{} not lossless: {:?}",
            l.name,
            l.sqnr_db
        );
    }
    let input = g.inputs[0].0.clone();
    let xl = x.data.len() / x.shape[0];
    for i in 0..x.shape[0] {
        let xi = &x.data[i * xl..(i + 1) * xl];
        let want = shiftnn_converter::reference::run(&g, &[(input.as_str(), xi)])
            .unwrap()
            .remove(0);
        let got = run_model(&bytes, xi);
        let scale = want.iter().fold(1f32, |m, v| m.max(v.abs()));
        for (a, b) in got.iter().zip(&want) {
            assert!((a - b).abs() <= 1e-4 * scale, "item {i}: {a} vs {b}");
        }
    }
}

#[test]
fn int8_needs_calibration_and_bad_keep_is_named() {
    let (g, _, _) = fmnist();
    let e = convert(&g, &opts(Bits::B4, Mode::Int8, None, None)).unwrap_err();
    assert!(format!("{e:#}").contains("--calib"), "{e:#}");
    let e = convert(
        &g,
        &opts(Bits::B4, Mode::Float, Some(vec!["nope".into()]), None),
    )
    .unwrap_err();
    assert!(format!("{e:#}").contains("nope"), "{e:#}");
}

/// Threads change nothing: the bundled model (int8 and float, 3 and 4
/// bits) gives the same outputs on 1, 2 and 3 threads, where conv layers
/// are split by output-row bands or channels and pooling by channels.
/// Int8 is bit-identical; float is identical too (each output's sum is
/// computed by the same kernel code whatever the split), checked exactly.
#[test]
fn threads_change_no_output() {
    let (g, x, _) = fmnist();
    let n = x.shape[0];
    let xl = x.data.len() / n;
    let calib = CalibData {
        x: x.data.clone(),
        n,
    };
    for (bits, mode) in [
        (Bits::B4, Mode::Int8),
        (Bits::B3, Mode::Int8),
        (Bits::B3, Mode::Float),
    ] {
        let (bytes, _) = convert(&g, &opts(bits, mode, None, Some(calib.clone()))).unwrap();
        let m = Model::from_vec(&bytes).unwrap();
        let mut outs: Vec<Vec<f32>> = vec![];
        // 2 and 3 threads with spinning workers (the default), 2 with
        // sleeping ones.
        for (t, spin) in [(1, true), (2, true), (3, true), (2, false)] {
            let mut s = Session::new(&m).unwrap();
            s.set_threads(t).unwrap();
            s.set_spinning(spin);
            let mut all = vec![];
            for i in 0..n.min(6) {
                let mut y = vec![0f32; m.output_len(0)];
                s.run(&[&x.data[i * xl..(i + 1) * xl]], &mut [&mut y])
                    .unwrap();
                all.extend(y);
            }
            outs.push(all);
        }
        assert_eq!(outs[1], outs[0], "{bits:?} {mode:?}: 2 threads");
        assert_eq!(outs[2], outs[0], "{bits:?} {mode:?}: 3 threads");
        assert_eq!(outs[3], outs[0], "{bits:?} {mode:?}: 2 sleeping threads");
    }
}
