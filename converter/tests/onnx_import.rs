//! ONNX importer tests on models built in the test with prost (no files):
//! lowering, opset differences, constant folding, and hostile inputs that
//! must give an error naming the node/attribute, never a panic.

use prost::Message;
use shiftnn_converter::ir::{Graph, Op};
use shiftnn_converter::onnx::{self, proto::*};
use shiftnn_converter::reference;

// ---------------------------------------------------------------- builders

fn tf(name: &str, dims: &[i64], data: &[f32]) -> TensorProto {
    TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: data_type::FLOAT,
        float_data: data.to_vec(),
        ..Default::default()
    }
}

fn ti(name: &str, dims: &[i64], data: &[i64]) -> TensorProto {
    TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: data_type::INT64,
        int64_data: data.to_vec(),
        ..Default::default()
    }
}

fn ai(name: &str, i: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: attr_type::INT,
        i,
        ..Default::default()
    }
}
fn af(name: &str, f: f32) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: attr_type::FLOAT,
        f,
        ..Default::default()
    }
}
fn ais(name: &str, ints: &[i64]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: attr_type::INTS,
        ints: ints.to_vec(),
        ..Default::default()
    }
}
fn afs(name: &str, floats: &[f32]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: attr_type::FLOATS,
        floats: floats.to_vec(),
        ..Default::default()
    }
}
fn astr(name: &str, s: &str) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: attr_type::STRING,
        s: s.as_bytes().to_vec(),
        ..Default::default()
    }
}
fn at(name: &str, t: TensorProto) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: attr_type::TENSOR,
        t: Some(t),
        ..Default::default()
    }
}

fn node(
    op: &str,
    name: &str,
    ins: &[&str],
    outs: &[&str],
    attrs: Vec<AttributeProto>,
) -> NodeProto {
    NodeProto {
        op_type: op.into(),
        name: name.into(),
        input: ins.iter().map(|s| s.to_string()).collect(),
        output: outs.iter().map(|s| s.to_string()).collect(),
        attribute: attrs,
        ..Default::default()
    }
}

/// A value info; negative dims become the symbolic batch "N".
fn vi(name: &str, dims: &[i64]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|&d| {
            if d < 0 {
                Dimension {
                    dim_param: Some("N".into()),
                    ..Default::default()
                }
            } else {
                Dimension {
                    dim_value: Some(d),
                    ..Default::default()
                }
            }
        })
        .collect();
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            tensor_type: Some(TypeProtoTensor {
                elem_type: data_type::FLOAT,
                shape: Some(TensorShapeProto { dim }),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

struct M {
    opset: i64,
    nodes: Vec<NodeProto>,
    inits: Vec<TensorProto>,
    inputs: Vec<ValueInfoProto>,
    outputs: Vec<&'static str>,
}

impl M {
    fn new(opset: i64, input: &[i64]) -> M {
        M {
            opset,
            nodes: vec![],
            inits: vec![],
            inputs: vec![vi("x", input)],
            outputs: vec!["y"],
        }
    }
    fn n(mut self, n: NodeProto) -> M {
        self.nodes.push(n);
        self
    }
    fn init(mut self, t: TensorProto) -> M {
        self.inits.push(t);
        self
    }
    fn proto(&self) -> ModelProto {
        ModelProto {
            ir_version: 8,
            producer_name: "test".into(),
            opset_import: vec![OperatorSetIdProto {
                domain: String::new(),
                version: self.opset,
            }],
            graph: Some(GraphProto {
                name: "g".into(),
                node: self.nodes.clone(),
                initializer: self.inits.clone(),
                input: self.inputs.clone(),
                output: self.outputs.iter().map(|o| vi(o, &[])).collect(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }
    fn bytes(&self) -> Vec<u8> {
        self.proto().encode_to_vec()
    }
    fn load(&self) -> Graph {
        onnx::load(&self.bytes()).unwrap_or_else(|e| panic!("load failed: {e}"))
    }
    fn err(&self) -> String {
        match onnx::load(&self.bytes()) {
            Ok(g) => panic!("expected an error, got {g:#?}"),
            Err(e) => e.to_string(),
        }
    }
}

fn ramp(n: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|i| ((i * 7 % 13) as f32 - 6.0) * scale)
        .collect()
}

fn ops(g: &Graph) -> Vec<&'static str> {
    g.nodes.iter().map(|n| n.op.name()).collect()
}

fn run1(g: &Graph, x: &[f32]) -> Vec<f32> {
    reference::run(g, &[(g.inputs[0].0.as_str(), x)])
        .expect("runs")
        .remove(0)
}

fn close(a: &[f32], b: &[f32]) {
    assert_eq!(a.len(), b.len());
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            (x - y).abs() <= 1e-5 * y.abs().max(1.0),
            "at {i}: {x} vs {y}\n{a:?}\n{b:?}"
        );
    }
}

// ------------------------------------------------------------ lowering

#[test]
fn conv_bn_relu_pool_gemm() {
    let m = M::new(13, &[-1, 2, 6, 6])
        .init(tf("w", &[4, 2, 3, 3], &ramp(72, 0.1)))
        .init(tf("b", &[4], &[0.1, -0.2, 0.3, 0.0]))
        .init(tf("g", &[4], &[1.0, 2.0, 0.5, 1.0]))
        .init(tf("be", &[4], &[0.0, 0.1, 0.2, 0.3]))
        .init(tf("mu", &[4], &[0.1, 0.0, -0.1, 0.2]))
        .init(tf("var", &[4], &[1.0, 0.5, 2.0, 1.5]))
        .init(tf("fw", &[3, 4], &ramp(12, 0.5)))
        .init(tf("fb", &[3], &[1.0, 2.0, 3.0]))
        .n(node(
            "Conv",
            "conv",
            &["x", "w", "b"],
            &["c"],
            vec![ais("pads", &[1, 1, 1, 1])],
        ))
        .n(node(
            "BatchNormalization",
            "bn",
            &["c", "g", "be", "mu", "var"],
            &["n"],
            vec![af("epsilon", 1e-3)],
        ))
        .n(node("Relu", "", &["n"], &["r"], vec![]))
        .n(node("GlobalAveragePool", "gap", &["r"], &["p"], vec![]))
        .n(node("Flatten", "fl", &["p"], &["f"], vec![]))
        .n(node(
            "Gemm",
            "fc",
            &["f", "fw", "fb"],
            &["y"],
            vec![ai("transB", 1), af("alpha", 2.0)],
        ));
    let g = m.load();
    assert_eq!(
        ops(&g),
        [
            "Conv",
            "BatchNorm",
            "Relu",
            "GlobalAveragePool",
            "Reshape",
            "Linear"
        ]
    );
    assert_eq!(g.nodes[2].name, "Relu_2");
    assert_eq!(g.inputs, vec![("x".to_string(), vec![1, 2, 6, 6])]);
    assert_eq!(g.shapes["c"], [1, 4, 6, 6]);
    assert_eq!(g.shapes["y"], [1, 3]);
    assert_eq!(g.outputs, ["y"]);
    let Op::Linear { weight, bias } = &g.nodes[5].op else {
        panic!()
    };
    assert_eq!(weight.shape, [3, 4]);
    assert_eq!(weight.data[1], 2.0 * ramp(12, 0.5)[1]);
    assert_eq!(bias.as_deref(), Some(&[1.0, 2.0, 3.0][..]));
    let x = ramp(72, 0.3);
    let all = reference::run_all(&g, &[("x", &x)]).unwrap();
    assert_eq!(all["y"].len(), 3);
    assert_eq!(all["c"].len(), 144);
    // Conv output at (oc 0, y 0, x 0), computed by hand.
    let w = ramp(72, 0.1);
    let mut acc = 0.1;
    for ic in 0..2 {
        for ky in 0..3 {
            for kx in 0..3 {
                let (iy, ix) = (ky as isize - 1, kx as isize - 1);
                if iy >= 0 && ix >= 0 {
                    acc += x[ic * 36 + iy as usize * 6 + ix as usize] * w[ic * 9 + ky * 3 + kx];
                }
            }
        }
    }
    assert!((all["c"][0] - acc).abs() < 1e-5);
}

#[test]
fn matmul_add_becomes_linear_with_bias() {
    let m = M::new(17, &[1, 4])
        .init(tf("w", &[4, 2], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]))
        .init(tf("b", &[2], &[0.5, -0.5]))
        .n(node("MatMul", "mm", &["x", "w"], &["t"], vec![]))
        .n(node("Add", "add", &["t", "b"], &["y"], vec![]));
    let g = m.load();
    assert_eq!(ops(&g), ["Linear"]);
    let Op::Linear { weight, bias } = &g.nodes[0].op else {
        panic!()
    };
    assert_eq!(weight.shape, [2, 4]);
    assert_eq!(weight.data, [1.0, 3.0, 5.0, 7.0, 2.0, 4.0, 6.0, 8.0]);
    assert_eq!(bias.as_deref(), Some(&[0.5, -0.5][..]));
    assert_eq!(g.nodes[0].output, "y");
    close(
        &run1(&g, &[1.0, 0.0, 0.0, 1.0]),
        &[1.0 + 7.0 + 0.5, 2.0 + 8.0 - 0.5],
    );
}

#[test]
fn gemm_without_transb_and_beta() {
    let m = M::new(11, &[1, 2])
        .init(tf("w", &[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]))
        .init(tf("c", &[1, 3], &[1.0, 1.0, 1.0]))
        .n(node(
            "Gemm",
            "fc",
            &["x", "w", "c"],
            &["y"],
            vec![af("beta", 0.5)],
        ));
    let g = m.load();
    close(&run1(&g, &[1.0, 2.0]), &[9.5, 12.5, 15.5]);
}

#[test]
fn per_channel_arith_becomes_one_channel_affine() {
    let m = M::new(13, &[1, 2, 1, 2])
        .init(tf("s", &[1, 2, 1, 1], &[2.0, 3.0]))
        .init(tf("k", &[], &[1.0]))
        .init(tf("d", &[2, 1, 1], &[4.0, 0.5]))
        .n(node("Mul", "mul", &["x", "s"], &["a"], vec![]))
        .n(node("Sub", "sub", &["k", "a"], &["b"], vec![]))
        .n(node("Div", "div", &["b", "d"], &["y"], vec![]));
    let g = m.load();
    assert_eq!(ops(&g), ["ChannelAffine"]);
    let x = [1.0, 2.0, 3.0, 4.0];
    // (1 - x*s) / d
    close(
        &run1(&g, &x),
        &[
            (1.0 - 2.0) / 4.0,
            (1.0 - 4.0) / 4.0,
            (1.0 - 9.0) / 0.5,
            (1.0 - 12.0) / 0.5,
        ],
    );
}

#[test]
fn non_channel_broadcast_is_rejected() {
    let m = M::new(13, &[1, 2, 1, 2])
        .init(tf("s", &[2], &[2.0, 3.0]))
        .n(node("Mul", "mul", &["x", "s"], &["y"], vec![]));
    let e = m.err();
    assert!(
        e.contains("node \"mul\" (Mul)") && e.contains("per channel"),
        "{e}"
    );
}

#[test]
fn pytorch_dynamic_flatten_folds_to_static_reshape() {
    let m = M::new(13, &[-1, 3, 2, 2])
        .init(ti("zero", &[], &[0]))
        .init(ti("ax", &[1], &[0]))
        .init(ti("minus1", &[1], &[-1]))
        .n(node("Shape", "shape", &["x"], &["s"], vec![]))
        .n(node(
            "Gather",
            "gather",
            &["s", "zero"],
            &["b"],
            vec![ai("axis", 0)],
        ))
        .n(node("Unsqueeze", "unsq", &["b", "ax"], &["b1"], vec![]))
        .n(node(
            "Concat",
            "cat",
            &["b1", "minus1"],
            &["shp"],
            vec![ai("axis", 0)],
        ))
        .n(node("Reshape", "reshape", &["x", "shp"], &["y"], vec![]));
    let g = m.load();
    assert_eq!(ops(&g), ["Reshape"]);
    assert_eq!(g.nodes[0].op, Op::Reshape { shape: vec![1, 12] });
    assert_eq!(g.nodes[0].name, "reshape");
    // Opset 11: Unsqueeze axes as attribute.
    let m = M::new(11, &[-1, 3, 2, 2])
        .init(ti("zero", &[], &[0]))
        .init(ti("minus1", &[1], &[-1]))
        .n(node("Shape", "shape", &["x"], &["s"], vec![]))
        .n(node("Gather", "gather", &["s", "zero"], &["b"], vec![]))
        .n(node(
            "Unsqueeze",
            "unsq",
            &["b"],
            &["b1"],
            vec![ais("axes", &[0])],
        ))
        .n(node(
            "Concat",
            "cat",
            &["b1", "minus1"],
            &["shp"],
            vec![ai("axis", -1)],
        ))
        .n(node("Reshape", "reshape", &["x", "shp"], &["y"], vec![]));
    assert_eq!(m.load().nodes[0].op, Op::Reshape { shape: vec![1, 12] });
}

#[test]
fn folding_slice_cast_mul_transpose_constantofshape() {
    // shape [1,3,4,4] -> slice [2:] = [4,4] -> mul 2 -> cast -> concat with [1,3] -> reshape [1,3,8,2]... via
    // ConstantOfShape([2]) filled with 1 used as a Mul factor.
    let cos_val = TensorProto {
        dims: vec![1],
        data_type: data_type::INT64,
        int64_data: vec![1],
        ..Default::default()
    };
    let m = M::new(13, &[1, 3, 4, 4])
        .init(ti("st", &[1], &[2]))
        .init(ti("en", &[1], &[i64::MAX]))
        .init(ti("two", &[], &[2]))
        .init(ti("half", &[2], &[1, 4]))
        .init(ti("lead", &[2], &[1, 3]))
        .init(ti("n2", &[1], &[2]))
        .n(node("Shape", "shape", &["x"], &["s"], vec![]))
        .n(node("Slice", "slice", &["s", "st", "en"], &["hw"], vec![]))
        .n(node("Mul", "mul", &["hw", "two"], &["hw2"], vec![]))
        .n(node("Div", "div", &["hw2", "half"], &["hw3"], vec![]))
        .n(node(
            "ConstantOfShape",
            "cos",
            &["n2"],
            &["ones"],
            vec![at("value", cos_val)],
        ))
        .n(node("Mul", "mul1", &["hw3", "ones"], &["hw4"], vec![]))
        .n(node("Cast", "cast", &["hw4"], &["hw5"], vec![ai("to", 7)]))
        .n(node("Transpose", "tr", &["hw5"], &["hw6"], vec![]))
        .n(node(
            "Concat",
            "cat",
            &["lead", "hw6"],
            &["shp"],
            vec![ai("axis", 0)],
        ))
        .n(node("Reshape", "reshape", &["x", "shp"], &["y"], vec![]));
    let g = m.load();
    assert_eq!(
        g.nodes[0].op,
        Op::Reshape {
            shape: vec![1, 3, 8, 2]
        }
    );
}

#[test]
fn softmax_opset_semantics() {
    let x: Vec<f32> = (0..6).map(|i| i as f32 * 0.3).collect();
    let soft = |v: &[f32]| {
        let s: f32 = v.iter().map(|a| a.exp()).sum();
        v.iter().map(|a| a.exp() / s).collect::<Vec<f32>>()
    };
    // Opset 11, default axis 1 on [1,2,3]: softmax over all 6 values.
    let m = M::new(11, &[1, 2, 3]).n(node("Softmax", "sm", &["x"], &["y"], vec![]));
    let g = m.load();
    assert_eq!(ops(&g), ["Reshape", "Softmax", "Reshape"]);
    assert_eq!(g.shapes["y"], [1, 2, 3]);
    close(&run1(&g, &x), &soft(&x));
    // Opset 13, default axis -1: per row of 3.
    let g = M::new(13, &[1, 2, 3])
        .n(node("Softmax", "sm", &["x"], &["y"], vec![]))
        .load();
    assert_eq!(g.nodes[0].op, Op::Softmax { axis: 2 });
    let mut want = soft(&x[..3]);
    want.extend(soft(&x[3..]));
    close(&run1(&g, &x), &want);
}

#[test]
fn clip_attr_vs_input_and_activations() {
    let g = M::new(7, &[1, 4])
        .n(node(
            "Clip",
            "c",
            &["x"],
            &["y"],
            vec![af("min", 0.0), af("max", 6.0)],
        ))
        .load();
    assert_eq!(g.nodes[0].op, Op::Clip { min: 0.0, max: 6.0 });
    let g = M::new(12, &[1, 4])
        .init(tf("lo", &[], &[-1.0]))
        .n(node("Clip", "c", &["x", "lo", ""], &["y"], vec![]))
        .load();
    assert_eq!(
        g.nodes[0].op,
        Op::Clip {
            min: -1.0,
            max: f32::INFINITY
        }
    );
    close(&run1(&g, &[-3.0, 0.5, 9.0, -0.5]), &[-1.0, 0.5, 9.0, -0.5]);
    let g = M::new(14, &[1, 4])
        .n(node("LeakyRelu", "l", &["x"], &["a"], vec![]))
        .n(node("HardSigmoid", "h", &["a"], &["b"], vec![]))
        .n(node("HardSwish", "s", &["b"], &["c"], vec![]))
        .n(node("Sigmoid", "g", &["c"], &["y"], vec![]))
        .load();
    assert_eq!(g.nodes[0].op, Op::LeakyRelu { alpha: 0.01 });
    assert_eq!(
        g.nodes[1].op,
        Op::HardSigmoid {
            alpha: 0.2,
            beta: 0.5
        }
    );
    let x = [-2.0f32, 0.0, 1.0, 4.0];
    let want: Vec<f32> = x
        .iter()
        .map(|&v| {
            let a = if v >= 0.0 { v } else { 0.01 * v };
            let b = (0.2 * a + 0.5f32).clamp(0.0, 1.0);
            let c = b * (b / 6.0 + 0.5).clamp(0.0, 1.0);
            1.0 / (1.0 + (-c).exp())
        })
        .collect();
    close(&run1(&g, &x), &want);
}

#[test]
fn squeeze_unsqueeze_dropout_identity_across_opsets() {
    let g = M::new(11, &[1, 3, 1, 1])
        .n(node(
            "Squeeze",
            "sq",
            &["x"],
            &["a"],
            vec![ais("axes", &[2, 3])],
        ))
        .n(node(
            "Dropout",
            "do",
            &["a"],
            &["b"],
            vec![af("ratio", 0.5)],
        ))
        .n(node(
            "Unsqueeze",
            "us",
            &["b"],
            &["c"],
            vec![ais("axes", &[-1])],
        ))
        .n(node("Identity", "id", &["c"], &["y"], vec![]))
        .load();
    assert_eq!(ops(&g), ["Reshape", "Reshape"]);
    assert_eq!(g.shapes["y"], [1, 3, 1]);
    assert_eq!(
        g.outputs,
        ["y"],
        "output keeps its ONNX name after Identity removal"
    );
    let g = M::new(13, &[1, 3, 1, 1])
        .init(ti("ax", &[2], &[2, 3]))
        .init(tf("ratio", &[], &[0.1]))
        .n(node("Squeeze", "sq", &["x", "ax"], &["a"], vec![]))
        .n(node("Dropout", "do", &["a", "ratio"], &["b", ""], vec![]))
        .n(node("Unsqueeze", "us", &["b", "ax"], &["y"], vec![]))
        .load();
    assert_eq!(g.shapes["y"], [1, 3, 1, 1]);
    close(&run1(&g, &[1.0, 2.0, 3.0]), &[1.0, 2.0, 3.0]);
}

#[test]
fn reshape_zero_and_allowzero() {
    let g = M::new(13, &[1, 6, 2])
        .init(ti("s", &[3], &[0, 3, -1]))
        .n(node("Reshape", "r", &["x", "s"], &["y"], vec![]))
        .load();
    assert_eq!(g.shapes["y"], [1, 3, 4]);
    let e = M::new(14, &[1, 6, 2])
        .init(ti("s", &[3], &[0, 3, -1]))
        .n(node(
            "Reshape",
            "r",
            &["x", "s"],
            &["y"],
            vec![ai("allowzero", 1)],
        ))
        .err();
    assert!(
        e.contains("node \"r\" (Reshape)") && e.contains("cannot reshape"),
        "{e}"
    );
}

#[test]
fn conv_auto_pad_groups_dilations() {
    let x = ramp(2 * 5 * 5, 0.2);
    // Depthwise, SAME_UPPER, stride 2: out 3x3.
    let g = M::new(13, &[1, 2, 5, 5])
        .init(tf(
            "w",
            &[2, 1, 2, 2],
            &[1.0, 1.0, 1.0, 1.0, 1.0, -1.0, 0.0, 2.0],
        ))
        .n(node(
            "Conv",
            "dw",
            &["x", "w"],
            &["y"],
            vec![
                ai("group", 2),
                astr("auto_pad", "SAME_UPPER"),
                ais("strides", &[2, 2]),
            ],
        ))
        .load();
    let Op::Conv { window, groups, .. } = &g.nodes[0].op else {
        panic!()
    };
    assert_eq!(
        (*groups, window.pads, g.shapes["y"].clone()),
        (2, [0, 0, 1, 1], vec![1, 2, 3, 3])
    );
    let y = run1(&g, &x);
    // Channel 1, output (0,0): taps (0,0),(0,1),(1,0),(1,1) of channel 1.
    let c1 = &x[25..];
    assert!((y[9] - (c1[0] - c1[1] + 2.0 * c1[6])).abs() < 1e-5);
    // Bottom-right window (4,4): only tap (0,0) inside.
    assert!((y[8] - x[24]).abs() < 1e-5);
    // SAME_LOWER puts the extra pad first; dilation 2 with missing kernel_shape.
    let g = M::new(13, &[1, 2, 5, 5])
        .init(tf("w", &[1, 2, 2, 2], &[1.0; 8]))
        .n(node(
            "Conv",
            "c",
            &["x", "w"],
            &["y"],
            vec![astr("auto_pad", "SAME_LOWER"), ais("dilations", &[2, 2])],
        ))
        .load();
    let Op::Conv { window, .. } = &g.nodes[0].op else {
        panic!()
    };
    assert_eq!(
        (window.pads, window.dilations, window.kernel),
        ([1, 1, 1, 1], [2, 2], [2, 2])
    );
    let g = M::new(13, &[1, 2, 5, 5])
        .init(tf("w", &[1, 2, 3, 3], &[1.0; 18]))
        .n(node(
            "Conv",
            "c",
            &["x", "w"],
            &["y"],
            vec![astr("auto_pad", "VALID"), ais("kernel_shape", &[3, 3])],
        ))
        .load();
    assert_eq!(g.shapes["y"], [1, 1, 3, 3]);
}

#[test]
fn pools_ceil_mode_and_count_include_pad() {
    let x: Vec<f32> = (0..16).map(|i| i as f32).collect();
    let g = M::new(12, &[1, 1, 4, 4])
        .n(node(
            "MaxPool",
            "mp",
            &["x"],
            &["y"],
            vec![
                ais("kernel_shape", &[3, 3]),
                ais("strides", &[2, 2]),
                ai("ceil_mode", 1),
            ],
        ))
        .load();
    assert_eq!(g.shapes["y"], [1, 1, 2, 2]);
    close(&run1(&g, &x), &[10.0, 11.0, 14.0, 15.0]);
    let avg = |include: i64| {
        M::new(12, &[1, 1, 4, 4])
            .n(node(
                "AveragePool",
                "ap",
                &["x"],
                &["y"],
                vec![
                    ais("kernel_shape", &[2, 2]),
                    ais("strides", &[2, 2]),
                    ais("pads", &[1, 1, 1, 1]),
                    ai("count_include_pad", include),
                ],
            ))
            .load()
    };
    let g = avg(1);
    assert_eq!(g.shapes["y"], [1, 1, 3, 3]);
    let y = run1(&g, &x);
    close(&y[..2], &[0.0 / 4.0, (1.0 + 2.0) / 4.0]);
    let y = run1(&avg(0), &x);
    close(&y[..2], &[0.0, 1.5]);
    // MaxPool with dilation and SAME_UPPER.
    let g = M::new(12, &[1, 1, 4, 4])
        .n(node(
            "MaxPool",
            "mp",
            &["x"],
            &["y"],
            vec![
                ais("kernel_shape", &[2, 2]),
                ais("dilations", &[2, 2]),
                astr("auto_pad", "SAME_UPPER"),
            ],
        ))
        .load();
    assert_eq!(g.shapes["y"], [1, 1, 4, 4]);
    // Window at (0,0) covers rows/cols {-1, 1}: only x[1][1] = 5 is inside.
    assert_eq!(run1(&g, &x)[0], 5.0);
}

#[test]
fn reduce_mean_concat_add_transpose() {
    let g = M::new(13, &[1, 2, 2, 2])
        .n(node(
            "ReduceMean",
            "rm",
            &["x"],
            &["m"],
            vec![ais("axes", &[-1, -2]), ai("keepdims", 0)],
        ))
        .n(node("Relu", "r", &["m"], &["r1"], vec![]))
        .n(node("Add", "add", &["m", "r1"], &["a"], vec![]))
        .n(node(
            "Concat",
            "cat",
            &["a", "m"],
            &["c"],
            vec![ai("axis", -1)],
        ))
        .n(node(
            "Transpose",
            "t",
            &["c"],
            &["y"],
            vec![ais("perm", &[1, 0])],
        ))
        .load();
    assert_eq!(
        ops(&g),
        [
            "GlobalAveragePool",
            "Reshape",
            "Relu",
            "Add",
            "Concat",
            "Reshape"
        ]
    );
    assert_eq!(g.shapes["y"], [4, 1]);
    close(
        &run1(&g, &[1.0, 2.0, 3.0, 4.0, -1.0, -2.0, -3.0, -4.0]),
        &[5.0, 0.0 - 2.5, 2.5, -2.5],
    );
}

#[test]
fn constants_from_nodes_and_storage_forms() {
    let raw16: Vec<u8> = [1.0f32, -2.0, 0.5]
        .iter()
        .flat_map(|&v| half::f16::from_f32(v).to_bits().to_le_bytes())
        .collect();
    let f16 = TensorProto {
        dims: vec![3],
        data_type: data_type::FLOAT16,
        raw_data: raw16,
        ..Default::default()
    };
    let f64t = TensorProto {
        dims: vec![3],
        data_type: data_type::DOUBLE,
        double_data: vec![1.0, 1.0, 2.0],
        ..Default::default()
    };
    let raw32: Vec<u8> = [0.5f32, 0.5, 0.5]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let m = M::new(13, &[1, 3])
        .init(TensorProto {
            name: "r".into(),
            dims: vec![3],
            data_type: data_type::FLOAT,
            raw_data: raw32,
            ..Default::default()
        })
        .n(node("Constant", "k1", &[], &["a"], vec![at("value", f16)]))
        .n(node("Constant", "k2", &[], &["b"], vec![at("value", f64t)]))
        .n(node(
            "Constant",
            "k3",
            &[],
            &["c"],
            vec![afs("value_floats", &[0.0, 1.0, 0.0])],
        ))
        .n(node("Mul", "m1", &["x", "a"], &["t1"], vec![]))
        .n(node("Add", "a1", &["t1", "b"], &["t2"], vec![]))
        .n(node("Add", "a2", &["t2", "c"], &["t3"], vec![]))
        .n(node("Mul", "m2", &["t3", "r"], &["y"], vec![]));
    let g = m.load();
    assert_eq!(ops(&g), ["ChannelAffine"]);
    close(&run1(&g, &[1.0, 1.0, 1.0]), &[1.0, -0.0, 1.25]);
}

#[test]
fn nodes_out_of_order_are_sorted() {
    let g = M::new(13, &[1, 2])
        .n(node("Relu", "second", &["a"], &["y"], vec![]))
        .n(node("Sigmoid", "first", &["x"], &["a"], vec![]))
        .load();
    assert_eq!(ops(&g), ["Sigmoid", "Relu"]);
}

#[test]
fn check_reports_every_node() {
    let m = M::new(13, &[1, 2, 4, 4])
        .n(node("Relu", "r", &["x"], &["a"], vec![]))
        .n(node("Upsample", "up", &["a"], &["b"], vec![]))
        .n(node("Relu", "r2", &["b"], &["c"], vec![]))
        .n(node("Conv", "", &["c", "c"], &["d"], vec![]))
        .n(node("Sigmoid", "s", &["x"], &["e"], vec![]))
        .n(node("Erf", "", &["e"], &["y"], vec![]));
    let r = onnx::check(&m.bytes()).unwrap();
    let v: Vec<(&str, &str, bool)> = r
        .nodes
        .iter()
        .map(|n| (n.name.as_str(), n.op_type.as_str(), n.supported))
        .collect();
    assert_eq!(
        v,
        [
            ("r", "Relu", true),
            ("up", "Upsample", false),
            ("r2", "Relu", true),
            ("Conv_3", "Conv", true),
            ("s", "Sigmoid", true),
            ("Erf_5", "Erf", false)
        ]
    );
    assert!(r.nodes[1]
        .reason
        .as_deref()
        .unwrap()
        .contains("Upsample is not supported"));
    assert!(r.nodes[2]
        .reason
        .as_deref()
        .unwrap()
        .contains("not checked"));
    assert!(!r.is_ok());
    assert!(r.to_string().contains("2 of 6 nodes unsupported"));
    let e = m.err();
    assert!(
        e.starts_with("node \"up\" (Upsample): operator Upsample is not supported"),
        "{e}"
    );
}

// ------------------------------------------------------- hostile input

fn expect_err(m: &M, needles: &[&str]) {
    let e = m.err();
    for n in needles {
        assert!(e.contains(n), "error {e:?} lacks {n:?}");
    }
}

fn conv_model(attrs: Vec<AttributeProto>, input: &[i64], w: &[i64]) -> M {
    let n: i64 = w.iter().product();
    M::new(13, input)
        .init(tf("w", w, &vec![0.5; n as usize]))
        .n(node("Relu", "", &["x"], &["r"], vec![]))
        .n(node("Sigmoid", "", &["r"], &["s"], vec![]))
        .n(node("Relu", "", &["s"], &["t"], vec![]))
        .n(node("Conv", "", &["t", "w"], &["y"], attrs))
}

#[test]
fn bad_conv_attributes_name_node_and_attribute() {
    let e = conv_model(vec![astr("auto_pad", "FOO")], &[1, 2, 4, 4], &[2, 2, 3, 3]).err();
    assert_eq!(
        e,
        "node \"Conv_3\" (Conv): attribute \"auto_pad\" = \"FOO\" is not supported"
    );
    expect_err(
        &conv_model(
            vec![ais("pads", &[-1, 0, 0, 0])],
            &[1, 2, 4, 4],
            &[2, 2, 3, 3],
        ),
        &["Conv_3", "\"pads\""],
    );
    expect_err(
        &conv_model(vec![ais("strides", &[0, 1])], &[1, 2, 4, 4], &[2, 2, 3, 3]),
        &["Conv_3", "\"strides\""],
    );
    expect_err(
        &conv_model(vec![ais("dilations", &[1])], &[1, 2, 4, 4], &[2, 2, 3, 3]),
        &["Conv_3", "\"dilations\""],
    );
    expect_err(
        &conv_model(vec![ai("group", 3)], &[1, 2, 4, 4], &[3, 1, 3, 3]),
        &["Conv_3", "group"],
    );
    expect_err(
        &conv_model(vec![ai("group", 0)], &[1, 2, 4, 4], &[2, 2, 3, 3]),
        &["Conv_3", "group"],
    );
    expect_err(
        &conv_model(vec![], &[1, 2, 4, 4], &[2, 3, 3, 3]),
        &["Conv_3", "channels"],
    );
    expect_err(
        &conv_model(vec![], &[1, 2, 2, 2], &[2, 2, 3, 3]),
        &["Conv_3", "larger than the padded input"],
    );
    expect_err(
        &conv_model(
            vec![ais("kernel_shape", &[5, 5])],
            &[1, 2, 4, 4],
            &[2, 2, 3, 3],
        ),
        &["\"kernel_shape\""],
    );
    expect_err(
        &conv_model(vec![af("group", 1.0)], &[1, 2, 4, 4], &[2, 2, 3, 3]),
        &["\"group\" has type FLOAT"],
    );
    expect_err(
        &conv_model(
            vec![ais("strides", &[1 << 40, 1])],
            &[1, 2, 4, 4],
            &[2, 2, 3, 3],
        ),
        &["\"strides\""],
    );
    expect_err(
        &conv_model(
            vec![ais("pads", &[1 << 29, 0, 1 << 29, 0])],
            &[1, 2, 4, 4],
            &[2, 2, 3, 3],
        ),
        &["Conv_3", "too many"],
    );
}

#[test]
fn bad_pools() {
    let mp = |attrs| M::new(13, &[1, 1, 4, 4]).n(node("MaxPool", "mp", &["x"], &["y"], attrs));
    expect_err(&mp(vec![]), &["\"kernel_shape\" is required"]);
    expect_err(
        &mp(vec![ais("kernel_shape", &[5, 5])]),
        &["node \"mp\" (MaxPool)", "larger"],
    );
    expect_err(
        &mp(vec![
            ais("kernel_shape", &[2, 2]),
            ais("pads", &[2, 2, 2, 2]),
        ]),
        &["smaller than the kernel"],
    );
    expect_err(
        &mp(vec![ais("kernel_shape", &[2, 2]), ai("ceil_mode", 7)]),
        &["\"ceil_mode\" = 7"],
    );
    let m = M::new(13, &[1, 1, 4, 4])
        .n(node(
            "MaxPool",
            "mp",
            &["x"],
            &["a", "idx"],
            vec![ais("kernel_shape", &[2, 2])],
        ))
        .n(node("Cast", "c", &["idx"], &["b"], vec![ai("to", 1)]))
        .n(node("Add", "add", &["a", "b"], &["y"], vec![]));
    expect_err(&m, &["node \"mp\" (MaxPool)", "output 1 (\"idx\") is used"]);
}

#[test]
fn opsets_and_domains() {
    let relu = |op| M::new(op, &[1, 2]).n(node("Relu", "r", &["x"], &["y"], vec![]));
    for v in [7, 13, 21] {
        relu(v).load();
    }
    for v in [6, 22] {
        expect_err(&relu(v), &[&format!("opset version {v} is not supported")]);
    }
    let mut p = relu(13).proto();
    p.opset_import[0].domain = "ai.onnx.ml".into();
    let e = onnx::load(&p.encode_to_vec()).unwrap_err().to_string();
    assert!(e.contains("no opset of the default ONNX domain"), "{e}");
    let mut p = relu(13).proto();
    p.graph.as_mut().unwrap().node[0].domain = "com.microsoft".into();
    let e = onnx::load(&p.encode_to_vec()).unwrap_err().to_string();
    assert!(
        e.contains("node \"r\" (Relu)") && e.contains("com.microsoft"),
        "{e}"
    );
}

#[test]
fn graph_structure_errors_name_the_tensor() {
    let cyc = M::new(13, &[1, 2])
        .n(node("Add", "a", &["x", "c"], &["b"], vec![]))
        .n(node("Relu", "r", &["b"], &["c"], vec![]))
        .n(node("Relu", "r2", &["c"], &["y"], vec![]));
    expect_err(&cyc, &["cycle", "\"a\""]);
    let missing = M::new(13, &[1, 2]).n(node("Add", "a", &["x", "ghost"], &["y"], vec![]));
    expect_err(
        &missing,
        &["node \"a\" (Add)", "input \"ghost\" is not produced"],
    );
    let dup = M::new(13, &[1, 2])
        .n(node("Relu", "a", &["x"], &["y"], vec![]))
        .n(node("Sigmoid", "b", &["x"], &["y"], vec![]));
    expect_err(&dup, &["tensor \"y\" is produced twice"]);
    let mut out_missing = M::new(13, &[1, 2]).n(node("Relu", "a", &["x"], &["z"], vec![]));
    out_missing.outputs = vec!["nope"];
    expect_err(&out_missing, &["graph output \"nope\""]);
    let mut constant_out = M::new(13, &[1, 2]).init(tf("k", &[1], &[1.0])).n(node(
        "Identity",
        "i",
        &["k"],
        &["y"],
        vec![],
    ));
    constant_out.outputs = vec!["y"];
    expect_err(&constant_out, &["graph output \"y\" is a constant"]);
    expect_err(
        &M::new(13, &[1, -1, 4]).n(node("Relu", "a", &["x"], &["y"], vec![])),
        &["dimension 1 is dynamic"],
    );
}

#[test]
fn bad_tensors() {
    let relu_with = |t: TensorProto| {
        M::new(13, &[1, 2])
            .init(t)
            .n(node("Add", "a", &["x", "w"], &["y"], vec![]))
    };
    let raw = TensorProto {
        name: "w".into(),
        dims: vec![2],
        data_type: data_type::FLOAT,
        raw_data: vec![0; 7],
        ..Default::default()
    };
    expect_err(&relu_with(raw), &["tensor \"w\"", "needs 8 bytes"]);
    expect_err(
        &relu_with(tf("w", &[3], &[1.0, 2.0])),
        &["tensor \"w\"", "needs 3 values"],
    );
    expect_err(
        &relu_with(tf("w", &[1 << 40, 1 << 40], &[])),
        &["tensor \"w\"", "too many elements"],
    );
    expect_err(
        &relu_with(tf("w", &[i64::MAX, 2, 2], &[])),
        &["tensor \"w\"", "too many elements"],
    );
    expect_err(
        &relu_with(tf("w", &[-2], &[])),
        &["tensor \"w\"", "negative"],
    );
    let ext = TensorProto {
        name: "w".into(),
        dims: vec![2],
        data_type: data_type::FLOAT,
        data_location: 1,
        ..Default::default()
    };
    expect_err(&relu_with(ext), &["external data"]);
    let s = TensorProto {
        name: "w".into(),
        dims: vec![1],
        data_type: data_type::STRING,
        string_data: vec![b"a".to_vec()],
        ..Default::default()
    };
    expect_err(&relu_with(s), &["STRING"]);
    let cos = M::new(13, &[1, 2])
        .init(ti("s", &[2], &[1 << 20, 1 << 20]))
        .n(node("ConstantOfShape", "big", &["s"], &["k"], vec![]))
        .n(node("Add", "a", &["x", "k"], &["y"], vec![]));
    expect_err(
        &cos,
        &["node \"big\" (ConstantOfShape)", "too many elements"],
    );
}

#[test]
fn shape_mismatches_are_errors() {
    let m = M::new(13, &[1, 3])
        .init(tf("w", &[4, 2], &[0.0; 8]))
        .n(node("MatMul", "mm", &["x", "w"], &["y"], vec![]));
    expect_err(&m, &["node \"mm\" (MatMul)"]);
    let m = M::new(13, &[1, 3])
        .n(node("Relu", "r", &["x"], &["a"], vec![]))
        .n(node("Reshape", "rs", &["a", "a"], &["y"], vec![]));
    expect_err(&m, &["node \"rs\" (Reshape)", "must be a constant"]);
    let m = M::new(13, &[1, 3, 2, 2])
        .n(node("Relu", "r", &["x"], &["a"], vec![]))
        .n(node(
            "Concat",
            "c",
            &["x", "a"],
            &["y"],
            vec![ai("axis", 4)],
        ));
    expect_err(&m, &["node \"c\" (Concat)", "\"axis\""]);
    let m = M::new(13, &[1, 3, 2, 2])
        .init(tf("g", &[2], &[1.0; 2]))
        .n(node(
            "BatchNormalization",
            "bn",
            &["x", "g", "g", "g", "g"],
            &["y"],
            vec![],
        ));
    expect_err(
        &m,
        &["node \"bn\" (BatchNormalization)", "one value per channel"],
    );
}

#[test]
fn truncated_and_mutated_protobuf_never_panics() {
    let m = conv_model(
        vec![ais("pads", &[1, 1, 1, 1])],
        &[-1, 2, 4, 4],
        &[2, 2, 3, 3],
    )
    .init(ti("sh", &[2], &[1, -1]))
    .n(node("Reshape", "rs", &["y", "sh"], &["z"], vec![]));
    let bytes = m.bytes();
    assert!(onnx::load(&bytes).is_ok());
    let e = onnx::load(&bytes[..bytes.len() / 2])
        .unwrap_err()
        .to_string();
    assert!(e.contains("protobuf"), "{e}");
    for cut in 0..bytes.len() {
        let _ = onnx::load(&bytes[..cut]);
        let _ = onnx::check(&bytes[..cut]);
    }
    let mut state = 0x1234_5678_9abc_def0u64;
    for _ in 0..20_000 {
        let mut b = bytes.clone();
        for _ in 0..1 + (state % 4) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let i = (state as usize) % b.len();
            b[i] = (state >> 32) as u8;
        }
        let loaded = onnx::load(&b);
        if let Ok(r) = onnx::check(&b) {
            assert_eq!(r.is_ok(), loaded.is_ok(), "check and load disagree: {r}");
        }
        if let Ok(g) = loaded {
            let n: usize = g
                .inputs
                .iter()
                .map(|(_, s)| s.iter().product::<usize>())
                .sum();
            let total: usize = g.shapes.values().map(|s| s.iter().product::<usize>()).sum();
            if g.inputs.len() == 1 && total < 1 << 20 {
                let x = vec![0.5; n];
                let _ = reference::run(&g, &[(g.inputs[0].0.as_str(), &x)]);
            }
        }
    }
}
