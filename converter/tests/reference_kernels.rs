//! `Session::set_reference_kernels`: float-mode outputs equal those of the
//! scalar reference kernels bit for bit on any CPU (what makes calibration,
//! hence the converted file, the same everywhere). Its own test binary: the
//! ISA cap it sets is process-wide.

use shiftnn_converter::lower::{convert, CalibMethod, ConvertOptions};
use shiftnn_converter::{npy, onnx};
use shiftnn_kernels::dispatch::{self, Isa};
use shiftnn_kernels::Bits;
use shiftnn_runtime::{Mode, Model, Session};
use std::path::Path;

fn outputs(m: &Model, x: &npy::ArrayF32, reference: bool) -> Vec<f32> {
    let n = x.shape[0];
    let xl = x.data.len() / n;
    let mut s = Session::new(m).unwrap();
    s.set_reference_kernels(reference);
    let mut all = vec![];
    for i in 0..n.min(8) {
        let mut y = vec![0f32; m.output_len(0)];
        s.run(&[&x.data[i * xl..(i + 1) * xl]], &mut [&mut y])
            .unwrap();
        all.extend(y);
    }
    all
}

#[test]
fn reference_kernels_equal_scalar_on_any_level() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let g = onnx::load_file(root.join("examples/fmnist/fmnist_fp32.onnx")).unwrap();
    let x = npy::read_f32(root.join("tests/fixtures/onnx/fmnist.input.npy")).unwrap();
    let opts = ConvertOptions {
        bits: Bits::B4,
        mode: Mode::Float,
        keep: None,
        calib: None,
        calib_method: CalibMethod::MinMax,
        progress: None,
    };
    let (bytes, _) = convert(&g, &opts).unwrap();
    let m = Model::from_vec(&bytes).unwrap();
    dispatch::set_isa_cap(Some(Isa::Scalar));
    let scalar = outputs(&m, &x, false);
    dispatch::set_isa_cap(None);
    let reference = outputs(&m, &x, true);
    assert_eq!(
        reference,
        scalar,
        "reference kernels at level {:?}",
        dispatch::isa()
    );
    // The fastest kernels may differ in the last bits, but not by more
    // than float rounding.
    let fast = outputs(&m, &x, false);
    for (a, b) in fast.iter().zip(&scalar) {
        assert!((a - b).abs() <= 1e-3 * (1.0 + b.abs()), "{a} {b}");
    }
}
