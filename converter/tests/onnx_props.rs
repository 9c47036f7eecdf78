//! Property tests: random Conv/MaxPool/AveragePool attributes either import
//! to a graph whose reference output matches an independent naive
//! implementation (explicitly zero-padded input), or fail with an error
//! naming the node. Never a panic.

use proptest::prelude::*;
use prost::Message;
use shiftnn_converter::onnx::{self, proto::*};
use shiftnn_converter::reference;

fn ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: attr_type::INTS,
        ints: v.to_vec(),
        ..Default::default()
    }
}
fn int(name: &str, i: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: attr_type::INT,
        i,
        ..Default::default()
    }
}

fn model(
    op: &str,
    x: [i64; 4],
    w: Option<(Vec<i64>, Vec<f32>)>,
    attrs: Vec<AttributeProto>,
) -> Vec<u8> {
    let dims = |d: &[i64]| TensorShapeProto {
        dim: d
            .iter()
            .map(|&v| Dimension {
                dim_value: Some(v),
                ..Default::default()
            })
            .collect(),
    };
    let vi = |name: &str, d: &[i64]| ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            tensor_type: Some(TypeProtoTensor {
                elem_type: data_type::FLOAT,
                shape: Some(dims(d)),
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut inputs = vec!["x".to_string()];
    let mut init = vec![];
    if let Some((wd, data)) = w {
        inputs.push("w".into());
        init.push(TensorProto {
            name: "w".into(),
            dims: wd,
            data_type: data_type::FLOAT,
            float_data: data,
            ..Default::default()
        });
    }
    ModelProto {
        ir_version: 8,
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: 19,
        }],
        graph: Some(GraphProto {
            node: vec![NodeProto {
                op_type: op.into(),
                name: "n".into(),
                input: inputs,
                output: vec!["y".into()],
                attribute: attrs,
                ..Default::default()
            }],
            initializer: init,
            input: vec![vi("x", &x)],
            output: vec![vi("y", &[])],
            ..Default::default()
        }),
        ..Default::default()
    }
    .encode_to_vec()
}

/// Input padded with `fill` to [c, h + pt + pb, w + pl + pr].
fn padded(
    x: &[f32],
    c: usize,
    h: usize,
    w: usize,
    p: [usize; 4],
    fill: f32,
) -> (Vec<f32>, usize, usize) {
    let (ph, pw) = (h + p[0] + p[2], w + p[1] + p[3]);
    let mut out = vec![fill; c * ph * pw];
    for ch in 0..c {
        for y in 0..h {
            for xx in 0..w {
                out[(ch * ph + y + p[0]) * pw + xx + p[1]] = x[(ch * h + y) * w + xx];
            }
        }
    }
    (out, ph, pw)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn conv_matches_naive(
        c_per_g in 1usize..3, groups in 1usize..4, o_per_g in 1usize..3,
        h in 1usize..7, w in 1usize..7, k in 1usize..4, kw in 1usize..4,
        s in 0usize..3, d in 1usize..3, p in proptest::array::uniform4(0usize..3),
        bad_group in 0usize..6,
    ) {
        let cin = c_per_g * groups;
        let cout = o_per_g * groups;
        let g_attr = if bad_group == 0 { groups + 1 } else { groups };
        let wdims = vec![cout as i64, c_per_g as i64, k as i64, kw as i64];
        let wdata: Vec<f32> = (0..cout * c_per_g * k * kw).map(|i| ((i * 5 % 11) as f32 - 5.0) * 0.25).collect();
        let attrs = vec![
            int("group", g_attr as i64),
            ints("strides", &[s as i64, 1]),
            ints("dilations", &[d as i64, 1]),
            ints("pads", &p.map(|v| v as i64)),
        ];
        let bytes = model("Conv", [1, cin as i64, h as i64, w as i64], Some((wdims, wdata.clone())), attrs);
        match onnx::load(&bytes) {
            Err(e) => {
                let e = e.to_string();
                prop_assert!(e.starts_with("node \"n\" (Conv)"), "{}", e);
                // Must fail only for a reason: bad group, zero stride or a kernel larger than the input.
                let eff = (k - 1) * d + 1;
                prop_assert!(s == 0 || g_attr != groups || eff > h + p[0] + p[2] || kw > w + p[1] + p[3], "{}", e);
            }
            Ok(g) => {
                prop_assert!(s > 0 && g_attr == groups);
                let x: Vec<f32> = (0..cin * h * w).map(|i| ((i * 3 % 7) as f32 - 3.0) * 0.5).collect();
                let y = reference::run(&g, &[("x", &x)]).unwrap().remove(0);
                let (xp, ph, pw) = padded(&x, cin, h, w, p, 0.0);
                let oh = (ph - ((k - 1) * d + 1)) / s + 1;
                let ow = pw - kw + 1;
                prop_assert_eq!(&g.shapes["y"], &vec![1, cout, oh, ow]);
                for oc in 0..cout {
                    let grp = oc / o_per_g;
                    for oy in 0..oh {
                        for ox in 0..ow {
                            let mut acc = 0f32;
                            for icg in 0..c_per_g {
                                let ic = grp * c_per_g + icg;
                                for ky in 0..k {
                                    for kx in 0..kw {
                                        acc += xp[(ic * ph + oy * s + ky * d) * pw + ox + kx]
                                            * wdata[((oc * c_per_g + icg) * k + ky) * kw + kx];
                                    }
                                }
                            }
                            let got = y[(oc * oh + oy) * ow + ox];
                            prop_assert!((got - acc).abs() < 1e-4, "{} vs {}", got, acc);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn pools_match_naive(
        c in 1usize..3, h in 1usize..8, w in 1usize..8, k in 1usize..4,
        s in 1usize..3, p in proptest::array::uniform4(0usize..3),
        ceil in 0i64..2, include in 0i64..2, max in any::<bool>(),
    ) {
        let attrs = vec![
            ints("kernel_shape", &[k as i64, k as i64]),
            ints("strides", &[s as i64, s as i64]),
            ints("pads", &p.map(|v| v as i64)),
            int("ceil_mode", ceil),
            int("count_include_pad", include),
        ];
        let op = if max { "MaxPool" } else { "AveragePool" };
        let bytes = model(op, [1, c as i64, h as i64, w as i64], None, attrs);
        match onnx::load(&bytes) {
            Err(e) => {
                let e = e.to_string();
                prop_assert!(e.starts_with(&format!("node \"n\" ({op})")), "{}", e);
                prop_assert!(p.iter().any(|&v| v >= k) || k > h + p[0] + p[2] || k > w + p[1] + p[3], "{}", e);
            }
            Ok(g) => {
                let x: Vec<f32> = (0..c * h * w).map(|i| ((i * 3 % 7) as f32 - 3.0) * 0.5).collect();
                let y = reference::run(&g, &[("x", &x)]).unwrap().remove(0);
                // Naive: PyTorch/ONNX output size, windows clipped to the padded
                // (include) or real (exclude) input.
                let dim = |n: usize, pb: usize, pe: usize| {
                    let num = n + pb + pe - k;
                    let mut o = if ceil == 1 { num.div_ceil(s) + 1 } else { num / s + 1 };
                    if ceil == 1 && (o - 1) * s >= n + pb { o -= 1; }
                    o
                };
                let (oh, ow) = (dim(h, p[0], p[2]), dim(w, p[1], p[3]));
                prop_assert_eq!(&g.shapes["y"], &vec![1, c, oh, ow]);
                for ch in 0..c {
                    for oy in 0..oh {
                        for ox in 0..ow {
                            let y0 = (oy * s) as isize - p[0] as isize;
                            let x0 = (ox * s) as isize - p[1] as isize;
                            let y1 = (y0 + k as isize).min((h + p[2]) as isize);
                            let x1 = (x0 + k as isize).min((w + p[3]) as isize);
                            let pool_size = ((y1 - y0) * (x1 - x0)) as f32;
                            let (mut m, mut sum, mut cnt) = (f32::NEG_INFINITY, 0f32, 0f32);
                            for yy in y0.max(0)..y1.min(h as isize) {
                                for xx in x0.max(0)..x1.min(w as isize) {
                                    let v = x[(ch * h + yy as usize) * w + xx as usize];
                                    m = m.max(v);
                                    sum += v;
                                    cnt += 1.0;
                                }
                            }
                            let want = if max { m } else if include == 1 { sum / pool_size } else { sum / cnt };
                            let got = y[(ch * oh + oy) * ow + ox];
                            prop_assert!((got - want).abs() < 1e-5, "{} vs {} at {} {} {}", got, want, ch, oy, ox);
                        }
                    }
                }
            }
        }
    }
}
