//! ONNX import + float reference executor against ONNX Runtime outputs
//! generated offline (tests/fixtures/onnx/, see its MANIFEST.md).
//!
//! Bound: for every fixture, max |ours - ORT| <= 1e-4 * max(1, max |ORT|).

use std::path::{Path, PathBuf};

use shiftnn_converter::{onnx, reference};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read_npy(path: &Path) -> (Vec<usize>, Vec<f32>) {
    let a = shiftnn_converter::npy::read_f32(path)
        .unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
    (a.shape, a.data)
}

/// Runs one model on every batch item of `input` and compares with
/// `output`. Returns (compared values, max abs error, bound).
fn compare(model: &Path, input: &Path, output: &Path) -> (usize, f32, f32) {
    let graph = onnx::load_file(model).unwrap_or_else(|e| panic!("{}: {e}", model.display()));
    assert_eq!(
        graph.inputs.len(),
        1,
        "{}: fixtures have one input",
        model.display()
    );
    let (in_name, in_shape) = &graph.inputs[0];
    let per_item: usize = in_shape.iter().product();
    let (xs, x) = read_npy(input);
    let (ys, y) = read_npy(output);
    assert!(
        per_item > 0 && x.len() % per_item == 0,
        "{}: input {xs:?} vs graph {in_shape:?}",
        model.display()
    );
    let batch = x.len() / per_item;
    assert!(batch >= 1);
    assert_eq!(
        y.len() % batch,
        0,
        "{}: output {ys:?} for batch {batch}",
        model.display()
    );
    let out_item = y.len() / batch;
    let max_ref = y.iter().fold(0f32, |m, v| m.max(v.abs()));
    let bound = 1e-4 * max_ref.max(1.0);
    let mut max_err = 0f32;
    let mut count = 0;
    for b in 0..batch {
        let outs = reference::run(&graph, &[(in_name, &x[b * per_item..(b + 1) * per_item])])
            .unwrap_or_else(|e| panic!("{}: {e}", model.display()));
        let got = &outs[0];
        assert_eq!(got.len(), out_item, "{}: output size", model.display());
        let want = &y[b * out_item..(b + 1) * out_item];
        for (g, w) in got.iter().zip(want) {
            assert!(
                g.is_finite() || !w.is_finite(),
                "{}: non-finite output {g}",
                model.display()
            );
            max_err = max_err.max((g - w).abs());
            count += 1;
        }
        if want.iter().any(|&v| v != 0.0) {
            assert!(
                got.iter().any(|&v| v != 0.0),
                "{}: all-zero output",
                model.display()
            );
        }
    }
    (count, max_err, bound)
}

#[test]
fn fixtures_match_onnx_runtime() {
    let dir = root().join("tests/fixtures/onnx");
    let mut cases: Vec<(String, PathBuf, PathBuf, PathBuf)> = Vec::new();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .collect();
    entries.sort();
    for p in entries {
        if p.extension().and_then(|e| e.to_str()) != Some("onnx") {
            continue;
        }
        let stem = p
            .file_stem()
            .and_then(|s| s.to_str())
            .expect("utf-8 name")
            .to_string();
        let (i, o) = (
            dir.join(format!("{stem}.input.npy")),
            dir.join(format!("{stem}.output.npy")),
        );
        if i.exists() && o.exists() {
            cases.push((stem, p, i, o));
        }
    }
    // The real model lives with its example.
    let fm = root().join("examples/fmnist/fmnist_fp32.onnx");
    cases.push((
        "fmnist".into(),
        fm,
        dir.join("fmnist.input.npy"),
        dir.join("fmnist.output.npy"),
    ));

    let mut failures = Vec::new();
    let mut total = 0;
    for (name, model, input, output) in &cases {
        let (count, err, bound) = compare(model, input, output);
        eprintln!("{name:<28} {count:>7} values  max abs err {err:.3e}  bound {bound:.3e}");
        assert!(count > 0, "{name}: nothing compared");
        total += count;
        if err.is_nan() || err > bound {
            failures.push(format!("{name}: max abs err {err:e} > bound {bound:e}"));
        }
    }
    assert!(
        cases.len() >= 2,
        "expected generated fixtures in {}",
        dir.display()
    );
    eprintln!("{} models, {total} values compared", cases.len());
    assert!(
        failures.is_empty(),
        "mismatches vs ONNX Runtime:\n{}",
        failures.join("\n")
    );
}

#[test]
fn unsupported_op_fixture_is_rejected_and_reported() {
    let p = root().join("tests/fixtures/onnx/unsupported_op.onnx");
    let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let err = onnx::load(&bytes)
        .expect_err("unsupported op must not load")
        .to_string();
    assert!(err.contains("is not supported"), "{err}");
    let report = onnx::check(&bytes).expect("check runs");
    assert!(!report.is_ok());
    let bad: Vec<_> = report.unsupported().collect();
    assert!(!bad.is_empty());
    for b in bad {
        assert!(
            err.contains(&b.op_type) || report.nodes.len() > 1,
            "{err} vs {b:?}"
        );
    }
}
