//! `SHIFTNN_ISA` and `SHIFTNN_KERNEL` force a lower level or a family; the
//! dispatching entry points then run that kernel and still equal `scalar`.
//! `SHIFTNN_FP16=1` allows f16 arithmetic in float layers where the CPU
//! has it. One test function: the variables are process-wide.

use shiftnn_kernels::codes::pack;
use shiftnn_kernels::dispatch::{self, Family, Isa, Op};
use shiftnn_kernels::scalar::{self, Affine};
use shiftnn_kernels::{Bits, Conv2dGeom, PackedRows, Requant};

/// The dense 3x3 layer both checks run: strided, padded, 19 channels.
fn layer() -> Conv2dGeom {
    Conv2dGeom {
        c_in: 19,
        h: 9,
        w: 8,
        c_out: 7,
        kh: 3,
        kw: 3,
        stride: [1, 2],
        pads: [1, 1, 1, 0],
        dilation: [1, 1],
        groups: 1,
    }
}

fn run(isa: Option<&str>, fam: Option<&str>) -> (&'static str, &'static str) {
    match isa {
        Some(v) => std::env::set_var("SHIFTNN_ISA", v),
        None => std::env::remove_var("SHIFTNN_ISA"),
    }
    match fam {
        Some(v) => std::env::set_var("SHIFTNN_KERNEL", v),
        None => std::env::remove_var("SHIFTNN_KERNEL"),
    }
    dispatch::reload_env();
    let g = layer();
    for b in 2..=4 {
        let bits = Bits::new(b).unwrap();
        let codes: Vec<u8> = (0..g.c_out * g.k())
            .map(|i| (i * 11 % 16) as u8 & ((1 << b) - 1))
            .collect();
        let mut packed = vec![0u8; g.c_out * bits.row_bytes(g.k())];
        pack(&codes, bits, g.c_out, g.k(), &mut packed);
        let w = PackedRows::new(&packed, bits, g.c_out, g.k()).unwrap();
        let x: Vec<i8> = (0..g.in_len())
            .map(|i| (i * 37 % 256) as u8 as i8)
            .collect();
        let rq = vec![Requant::from_real(1.0 / 97.0, 1.0, -128, 127); g.c_out];
        let (mut want, mut got) = (vec![0i8; g.out_len()], vec![0i8; g.out_len()]);
        scalar::conv_shift_i8(&g, &x, &w, 0, &rq, &mut want);
        dispatch::conv_shift_i8(&g, &x, &w, 0, &rq, &mut got);
        assert_eq!(got, want, "isa {isa:?} family {fam:?} b {b}");
        let xf: Vec<f32> = x.iter().map(|&v| v as f32 / 8.0).collect();
        let ep = vec![Affine::IDENTITY; g.c_out];
        let (mut wf, mut gf) = (vec![0f32; g.out_len()], vec![0f32; g.out_len()]);
        scalar::conv_shift_f32(&g, &xf, &w, 0, &ep, &mut wf);
        dispatch::conv_shift_f32(&g, &xf, &w, 0, &ep, &mut gf);
        for (a, e) in gf.iter().zip(&wf) {
            assert!(
                (a - e).abs() <= 1e-3 * (1.0 + e.abs()),
                "isa {isa:?} family {fam:?}"
            );
        }
    }
    (
        dispatch::kernel_name(Op::ShiftI8, &g),
        dispatch::kernel_name(Op::ShiftF32, &g),
    )
}

#[test]
fn env_forces_level_and_family() {
    assert_eq!(
        run(Some("scalar"), None),
        ("scalar/shift-i8", "scalar/shift-f32")
    );
    assert_eq!(dispatch::isa(), Isa::Scalar);
    assert_eq!(
        run(None, Some("scalar")),
        ("scalar/shift-i8", "scalar/shift-f32")
    );
    let cpu = dispatch::detected();
    if Isa::Avx2.available() {
        assert_eq!(run(Some("avx2"), None), ("avx2/dot", "avx2/fexp"));
        assert_eq!(
            run(Some("avx2"), Some("shift")),
            ("avx2/shift", "avx2/fexp")
        );
        assert_eq!(run(Some("avx2"), Some("lut")), ("avx2/lut", "avx2/fexp"));
        if Isa::AvxVnni.available() {
            // The level's only kernels are `dot`'s; the other families
            // stay AVX2's.
            assert_eq!(run(Some("avxvnni"), None), ("avxvnni/dot", "avx2/fexp"));
            assert_eq!(
                run(Some("avx-vnni"), Some("shift")),
                ("avx2/shift", "avx2/fexp")
            );
        }
        let top = if Isa::Avx512.available() {
            // The float layer (36 pixels, 7 channels) fits the pixel-lane
            // GEMM (`gemm::applies`), which the float op runs on the codes
            // as they are, whatever int8 family is forced.
            assert_eq!(
                run(Some("avx512"), None),
                ("avx512/dot", "avx512/gemm-fexp")
            );
            assert_eq!(
                run(Some("avx512"), Some("shift")),
                ("avx512/shift", "avx512/gemm-fexp")
            );
            assert_eq!(
                run(Some("avx512"), Some("lut")),
                ("avx512/lut", "avx512/gemm-fexp")
            );
            "avx512/dot"
        } else {
            // A level above the CPU is capped.
            let top = if Isa::AvxVnni.available() {
                "avxvnni/dot"
            } else {
                "avx2/dot"
            };
            assert_eq!(run(Some("avx512"), Some("dot")).0, top);
            top
        };
        // A level of another architecture is ignored.
        assert_eq!(run(Some("neon"), None).0, top);
    }
    if Isa::Neon.available() {
        assert_eq!(run(Some("neon"), None), ("neon/shift", "neon/fexp"));
        assert_eq!(run(Some("neon"), Some("dot")).0, "scalar/shift-i8");
        assert_eq!(run(Some("neon"), Some("lut")).0, "neon/lut");
        if Isa::NeonDot.available() {
            assert_eq!(run(None, None), ("neondot/dot", "neon/fexp"));
            assert_eq!(run(Some("neondot"), Some("shift")).0, "neon/shift");
        } else {
            assert_eq!(run(Some("neondot"), None).0, "neon/shift");
        }
    }
    // Unknown values are ignored.
    run(Some("bogus"), Some("bogus"));
    assert_eq!(dispatch::isa(), cpu);
    assert_eq!(dispatch::forced_family(), None);
    dispatch::set_family(Some(Family::Scalar));
    assert_eq!(run_names(), "scalar/shift-i8");
    dispatch::set_family(None);
    dispatch::set_isa_cap(Some(Isa::Scalar));
    assert_eq!(run_names(), "scalar/shift-i8");
    dispatch::set_isa_cap(None);
    assert_eq!(dispatch::isa(), cpu);
    fp16_when_asked();
}

/// `SHIFTNN_FP16=1` (and [`dispatch::set_fp16`]) move dense float layers
/// to `neonfp16/fexp` on a CPU with FEAT_FP16, within the f16 bound, and
/// change nothing elsewhere; depthwise layers keep `*/dw-fexp`.
fn fp16_when_asked() {
    let dense = layer();
    let dw = Conv2dGeom {
        c_out: 19,
        groups: 19,
        ..dense
    };
    let f32_names = [dense, dw].map(|g| dispatch::kernel_name(Op::ShiftF32, &g));
    std::env::set_var("SHIFTNN_FP16", "1");
    dispatch::reload_env();
    assert!(dispatch::fp16_allowed());
    let names = [dense, dw].map(|g| dispatch::kernel_name(Op::ShiftF32, &g));
    eprintln!(
        "FEAT_FP16 {}: float kernels {names:?}",
        dispatch::has_fp16()
    );
    if dispatch::has_fp16() {
        assert_eq!(names, ["neonfp16/fexp", f32_names[1]]);
    } else {
        assert_eq!(names, f32_names);
    }
    let g = dense;
    let bits = Bits::new(4).unwrap();
    let codes: Vec<u8> = (0..g.c_out * g.k()).map(|i| (i * 7 % 16) as u8).collect();
    let mut packed = vec![0u8; g.c_out * bits.row_bytes(g.k())];
    pack(&codes, bits, g.c_out, g.k(), &mut packed);
    let w = PackedRows::new(&packed, bits, g.c_out, g.k()).unwrap();
    let xf: Vec<f32> = (0..g.in_len())
        .map(|i| (i * 37 % 256) as f32 / 8.0 - 16.0 + 1.0 / 3.0)
        .collect();
    let ep = vec![Affine::IDENTITY; g.c_out];
    let mut got = vec![0f32; g.out_len()];
    dispatch::conv_shift_f32(&g, &xf, &w, 0, &ep, &mut got);
    let mut max_err = 0f64;
    for oc in 0..g.c_out {
        for (q, &v) in got[oc * g.out_plane()..][..g.out_plane()]
            .iter()
            .enumerate()
        {
            let (mut exact, mut abs, mut n) = (0f64, 0f64, 0f64);
            g.for_each_tap(oc, q / g.out_w(), q % g.out_w(), |xi, ki| {
                let t = xf[xi] as f64 * bits.value(codes[oc * g.k() + ki]) as f64;
                exact += t;
                abs += t.abs();
                n += 1.0;
            });
            let bound = (2f64.powi(-10) + 2f64.powi(-21) + n * 2f64.powi(-23)) * abs;
            assert!((v as f64 - exact).abs() <= bound, "oc {oc} px {q}");
            max_err = max_err.max((v as f64 - exact).abs() / abs);
        }
    }
    // The f32 kernels are far inside the f16 bound; the f16 kernel rounds
    // these activations (thirds), so its error shows.
    assert_eq!(
        max_err > 2f64.powi(-16),
        names[0] == "neonfp16/fexp",
        "{max_err:e}"
    );
    dispatch::set_fp16(false);
    assert!(!dispatch::fp16_allowed());
    assert_eq!(
        [dense, dw].map(|g| dispatch::kernel_name(Op::ShiftF32, &g)),
        f32_names
    );
    std::env::remove_var("SHIFTNN_FP16");
}

fn run_names() -> &'static str {
    dispatch::kernel_name(Op::ShiftI8, &Conv2dGeom::linear(256, 4))
}
