//! Lowering: the float IR becomes a `.shift` model. Fuses BatchNorm and
//! clamp activations into their producers, quantizes weights (shift codes,
//! or int8/f32 for kept layers), calibrates int8 activation scales by
//! running the float-mode shift model through the runtime, and writes the
//! container.

use crate::ir::{self, Op as IrOp};
use crate::quantize::{quantize_i8, quantize_shift, quantize_shift_calibrated, InputStats};
use anyhow::{anyhow, bail, Context, Result};
use rayon::prelude::*;
use safetensors::Dtype;
use shiftnn_kernels::{codes::pack, Bits};
use shiftnn_runtime::format::{self, TensorData, FORMAT_NAME, FORMAT_VERSION};
use shiftnn_runtime::graph::{
    Act, DType, Graph, Mode, Node, NormRef, Op, Value, WeightKind, WeightRef,
};
use shiftnn_runtime::{planner, Model, Session};
use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// How int8 activation ranges are chosen from calibration data.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum CalibMethod {
    /// The largest absolute value seen.
    MinMax,
    /// The given percentile (e.g. 99.99) of absolute values.
    Percentile(f64),
}

/// Calibration inputs: `n` samples of the graph input, row-major.
#[derive(Clone, Debug)]
pub struct CalibData {
    /// Samples, concatenated.
    pub x: Vec<f32>,
    /// Number of samples.
    pub n: usize,
}

/// Conversion options.
pub struct ConvertOptions<'p> {
    /// Code width for shift layers.
    pub bits: Bits,
    /// Activation mode.
    pub mode: Mode,
    /// Layers kept at higher precision (node names); `None` keeps the first
    /// conv and the last linear/conv layer, as DenseShift does.
    pub keep: Option<Vec<String>>,
    /// Calibration data (required in int8 mode).
    pub calib: Option<CalibData>,
    /// Range rule.
    pub calib_method: CalibMethod,
    /// Progress callback (done, total) during calibration.
    pub progress: Option<&'p (dyn Fn(usize, usize) + Sync)>,
}

/// One weighted layer in the conversion report.
#[derive(Clone, Debug, serde::Serialize)]
pub struct LayerReport {
    /// Node name.
    pub name: String,
    /// Operator ("conv" or "linear").
    pub op: String,
    /// "shift", "i8" or "f32".
    pub weights: String,
    /// Bits per weight as stored (codes: b; int8: 8; f32: 32).
    pub bits: u32,
    /// Number of weights.
    pub params: usize,
    /// Bytes of stored weights (codes or values) plus channel scales.
    pub bytes: usize,
    /// Weight SQNR in dB (null when exact).
    pub sqnr_db: Option<f64>,
    /// Weights reproduced exactly.
    pub lossless: bool,
    /// Output signal-to-error ratio of a shift layer on the calibration
    /// inputs, dB, after bias correction (null without calibration data
    /// or when exact).
    pub output_sqnr_db: Option<f64>,
    /// The same for plain weight-MSE quantization, for comparison.
    pub output_sqnr_mse_db: Option<f64>,
}

/// What a conversion did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ConvertReport {
    /// Weighted layers.
    pub layers: Vec<LayerReport>,
    /// Nodes after fusion.
    pub nodes: usize,
    /// BatchNorm/activation nodes fused into producers.
    pub fused: usize,
    /// Arena bytes of the plan.
    pub arena_bytes: usize,
    /// Size of the written file.
    pub file_bytes: usize,
}

enum WeightSrc {
    Shift {
        packed: Vec<u8>,
        scales: Vec<f32>,
    },
    Kept {
        w: Vec<f32>,
        q: Vec<i8>,
        qscales: Vec<f32>,
    },
}

struct SkNode {
    name: String,
    op: Op,
    inputs: Vec<usize>,
    output: usize,
    weight: Option<(WeightSrc, usize, usize)>, // (source, rows, k)
}

/// The mode-independent lowered graph.
struct Skeleton {
    values: Vec<(String, Vec<usize>)>,
    inputs: Vec<usize>,
    outputs: Vec<usize>,
    nodes: Vec<SkNode>,
    /// Float tensors shared by both modes (bias, norm parameters).
    tensors: Vec<(String, Vec<usize>, Vec<f32>)>,
}

fn clamp_act(op: &IrOp) -> Option<Act> {
    match op {
        IrOp::Relu => Some(Act::Relu),
        IrOp::Clip { min, max } => Some(match (*min, *max) {
            (lo, hi) if lo == f32::NEG_INFINITY && hi == f32::INFINITY => Act::None,
            (lo, hi) if lo == 0.0 && hi == f32::INFINITY => Act::Relu,
            // JSON has no infinity: an open side becomes the largest float.
            (lo, hi) => Act::Clip {
                lo: lo.max(f32::MIN),
                hi: hi.min(f32::MAX),
            },
        }),
        _ => None,
    }
}

fn other_act(op: &IrOp) -> Option<Act> {
    match *op {
        IrOp::LeakyRelu { alpha } => Some(Act::LeakyRelu { alpha }),
        IrOp::Sigmoid => Some(Act::Sigmoid),
        IrOp::HardSigmoid { alpha, beta } => Some(Act::HardSigmoid { alpha, beta }),
        IrOp::HardSwish => Some(Act::HardSwish),
        _ => clamp_act(op),
    }
}

/// Names of the layers DenseShift keeps at full precision: the first conv
/// and the last weighted layer.
pub fn default_keep(g: &ir::Graph) -> Vec<String> {
    let weighted: Vec<&ir::Node> = g
        .nodes
        .iter()
        .filter(|n| matches!(n.op, IrOp::Conv { .. } | IrOp::Linear { .. }))
        .collect();
    let mut keep = Vec::new();
    if let Some(f) = weighted.iter().find(|n| matches!(n.op, IrOp::Conv { .. })) {
        keep.push(f.name.clone());
    }
    if let Some(l) = weighted.last() {
        if !keep.contains(&l.name) {
            keep.push(l.name.clone());
        }
    }
    keep
}

fn skeleton(
    g: &ir::Graph,
    bits: Bits,
    keep: &BTreeSet<String>,
    stats: &HashMap<String, InputStats>,
    report: &mut Vec<LayerReport>,
    kept_i8_sqnr: &mut BTreeMap<String, f64>,
) -> Result<(Skeleton, usize)> {
    let mut uses: HashMap<&str, usize> = HashMap::new();
    let mut consumer: HashMap<&str, usize> = HashMap::new();
    for (j, n) in g.nodes.iter().enumerate() {
        for i in &n.inputs {
            *uses.entry(i).or_default() += 1;
            consumer.insert(i, j);
        }
    }
    for o in &g.outputs {
        *uses.entry(o).or_default() += 1;
    }
    // The single node consuming `v`, if `v` has exactly one use.
    let only_consumer = |v: &str| -> Option<usize> {
        if uses.get(v) == Some(&1) {
            consumer.get(v).copied()
        } else {
            None
        }
    };
    let mut sk = Skeleton {
        values: vec![],
        inputs: vec![],
        outputs: vec![],
        nodes: vec![],
        tensors: vec![],
    };
    let mut ids: HashMap<String, usize> = HashMap::new();
    let mut value = |sk: &mut Skeleton, name: &str| -> Result<usize> {
        if let Some(&i) = ids.get(name) {
            return Ok(i);
        }
        let shape = g
            .shapes
            .get(name)
            .ok_or_else(|| anyhow!("no shape for tensor \"{name}\""))?
            .clone();
        sk.values.push((name.to_string(), shape));
        ids.insert(name.to_string(), sk.values.len() - 1);
        Ok(sk.values.len() - 1)
    };
    for (name, _) in &g.inputs {
        let v = value(&mut sk, name)?;
        sk.inputs.push(v);
    }
    let mut absorbed = vec![false; g.nodes.len()];
    let mut fused = 0;
    for (j, node) in g.nodes.iter().enumerate() {
        if absorbed[j] {
            continue;
        }
        let mut out = node.output.clone();
        // Try to absorb a following BatchNorm (for conv/linear) and then a
        // clamp activation (for conv/linear/norm/affine/add).
        let mut norm: Option<NormRef> = None;
        let takes_norm = matches!(node.op, IrOp::Conv { .. } | IrOp::Linear { .. });
        if takes_norm {
            if let Some(k) = only_consumer(&out) {
                if let IrOp::BatchNorm {
                    gamma,
                    beta,
                    mean,
                    var,
                    eps,
                } = &g.nodes[k].op
                {
                    let prefix = g.nodes[k].name.clone();
                    push_norm(&mut sk, &prefix, gamma, beta, mean, var);
                    norm = Some(NormRef { prefix, eps: *eps });
                    absorbed[k] = true;
                    fused += 1;
                    out = g.nodes[k].output.clone();
                }
            }
        }
        let takes_act = matches!(
            node.op,
            IrOp::Conv { .. }
                | IrOp::Linear { .. }
                | IrOp::BatchNorm { .. }
                | IrOp::ChannelAffine { .. }
                | IrOp::Add
        );
        let mut act = Act::None;
        if takes_act {
            if let Some(k) = only_consumer(&out) {
                if let Some(a) = clamp_act(&g.nodes[k].op) {
                    act = a;
                    absorbed[k] = true;
                    fused += 1;
                    out = g.nodes[k].output.clone();
                }
            }
        }
        let inputs = node
            .inputs
            .iter()
            .map(|i| value(&mut sk, i))
            .collect::<Result<Vec<_>>>()?;
        let output = value(&mut sk, &out)?;
        let name = node.name.clone();
        let wref = |kind: WeightKind, b: u8| WeightRef {
            kind,
            bits: b,
            tensor: format!("{name}.weight"),
            scale: format!("{name}.wscale"),
        };
        let mut weight = None;
        let op = match &node.op {
            IrOp::Conv {
                weight: w, bias, ..
            }
            | IrOp::Linear { weight: w, bias } => {
                let rows = w.shape[0];
                let k = w.len() / rows.max(1);
                let kept = keep.contains(&name);
                let mut bias = bias.clone();
                let mut out_sqnr = (None, None);
                let (src, wk, rep_bits, bytes, sqnr, lossless) = if kept {
                    let q = quantize_i8(&w.data, rows, k);
                    let bytes = rows * k * 4 + rows * 4;
                    kept_i8_sqnr.insert(name.clone(), q.sqnr_db);
                    (
                        WeightSrc::Kept {
                            w: w.data.clone(),
                            q: q.q,
                            qscales: q.scales,
                        },
                        WeightKind::F32,
                        32,
                        bytes,
                        f64::INFINITY,
                        true,
                    )
                } else {
                    let q = match stats.get(&name) {
                        Some(st) => {
                            let c = quantize_shift_calibrated(&w.data, rows, k, bits, st);
                            if c.bias_correction.iter().any(|&b| b != 0.0) {
                                let b = bias.get_or_insert_with(|| vec![0.0; rows]);
                                for (b, d) in b.iter_mut().zip(&c.bias_correction) {
                                    *b += d;
                                }
                            }
                            let db = |e: f64| {
                                (e > 0.0 && c.output_var > 0.0)
                                    .then(|| 10.0 * (c.output_var / e).log10())
                            };
                            out_sqnr = (db(c.output_err), db(c.output_err_mse));
                            c.weights
                        }
                        None => quantize_shift(&w.data, rows, k, bits),
                    };
                    let mut packed = vec![0u8; rows * bits.row_bytes(k)];
                    pack(&q.codes, bits, rows, k, &mut packed);
                    let bytes = packed.len() + rows * 4;
                    (
                        WeightSrc::Shift {
                            packed,
                            scales: q.scales,
                        },
                        WeightKind::Shift,
                        bits.get(),
                        bytes,
                        q.sqnr_db,
                        q.lossless,
                    )
                };
                let bias_name = bias.as_ref().map(|b| {
                    let n = format!("{name}.bias");
                    sk.tensors.push((n.clone(), vec![b.len()], b.clone()));
                    n
                });
                report.push(LayerReport {
                    name: name.clone(),
                    op: if matches!(node.op, IrOp::Conv { .. }) {
                        "conv"
                    } else {
                        "linear"
                    }
                    .into(),
                    weights: if kept { "f32" } else { "shift" }.into(),
                    bits: rep_bits,
                    params: rows * k,
                    bytes,
                    sqnr_db: sqnr.is_finite().then_some(sqnr),
                    lossless,
                    output_sqnr_db: out_sqnr.0,
                    output_sqnr_mse_db: out_sqnr.1,
                });
                weight = Some((src, rows, k));
                let b = if kept { 0 } else { bits.get() as u8 };
                match &node.op {
                    IrOp::Conv { .. } => {
                        let (window, groups) = match &node.op {
                            IrOp::Conv { window, groups, .. } => (*window, *groups),
                            _ => unreachable!("matched Conv above"),
                        };
                        Op::Conv {
                            kernel: window.kernel,
                            strides: window.strides,
                            pads: window.pads,
                            dilations: window.dilations,
                            groups,
                            weight: wref(wk, b),
                            bias: bias_name,
                            norm,
                            act,
                        }
                    }
                    _ => Op::Linear {
                        weight: wref(wk, b),
                        bias: bias_name,
                        norm,
                        act,
                    },
                }
            }
            IrOp::BatchNorm {
                gamma,
                beta,
                mean,
                var,
                eps,
            } => {
                push_norm(&mut sk, &name, gamma, beta, mean, var);
                Op::Norm {
                    norm: NormRef {
                        prefix: name.clone(),
                        eps: *eps,
                    },
                    act,
                }
            }
            IrOp::ChannelAffine { scale, bias } => {
                let c = sk.values[inputs[0]].1.get(1).copied().unwrap_or(1);
                let bc = |v: &Vec<f32>| {
                    if v.len() == 1 {
                        vec![v[0]; c]
                    } else {
                        v.clone()
                    }
                };
                let (s, b) = (bc(scale), bc(bias));
                if s.len() != c || b.len() != c {
                    bail!(
                        "node \"{name}\": channel affine of {} values on {c} channels",
                        s.len()
                    );
                }
                push_norm(&mut sk, &name, &s, &b, &vec![0.0; c], &vec![1.0; c]);
                Op::Norm {
                    norm: NormRef {
                        prefix: name.clone(),
                        eps: 0.0,
                    },
                    act,
                }
            }
            IrOp::Add => Op::Add { act },
            IrOp::MaxPool { window, .. } => Op::MaxPool {
                kernel: window.kernel,
                strides: window.strides,
                pads: window.pads,
                dilations: window.dilations,
            },
            IrOp::AveragePool {
                window,
                count_include_pad,
                ..
            } => {
                if window.dilations != [1, 1] {
                    bail!("node \"{name}\": dilated average pooling is not supported");
                }
                Op::AvgPool {
                    kernel: window.kernel,
                    strides: window.strides,
                    pads: window.pads,
                    count_include_pad: *count_include_pad,
                }
            }
            IrOp::GlobalAveragePool => Op::GlobalAvgPool,
            IrOp::Reshape { .. } => Op::Reshape,
            IrOp::Concat { axis } => Op::Concat { axis: *axis },
            IrOp::Softmax { axis } => Op::Softmax { axis: *axis },
            other => match other_act(other) {
                Some(a) => Op::Act { act: a },
                None => bail!("node \"{name}\": {} cannot be lowered", other.name()),
            },
        };
        sk.nodes.push(SkNode {
            name,
            op,
            inputs,
            output,
            weight,
        });
    }
    for o in &g.outputs {
        let v = value(&mut sk, o)?;
        sk.outputs.push(v);
    }
    Ok((sk, fused))
}

fn push_norm(
    sk: &mut Skeleton,
    prefix: &str,
    gamma: &[f32],
    beta: &[f32],
    mean: &[f32],
    var: &[f32],
) {
    for (s, v) in [
        ("gamma", gamma),
        ("beta", beta),
        ("mean", mean),
        ("var", var),
    ] {
        sk.tensors
            .push((format!("{prefix}.{s}"), vec![v.len()], v.to_vec()));
    }
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    bytemuck::cast_slice(v).to_vec()
}

/// Ops whose int8 output keeps the input's scale.
fn keeps_scale(op: &Op) -> bool {
    matches!(
        op,
        Op::MaxPool { .. } | Op::AvgPool { .. } | Op::GlobalAvgPool | Op::Reshape
    )
}

/// Emit a runtime graph and its tensors for `mode`. `scales` (int8) gives
/// each skeleton value's activation scale.
fn emit(sk: &Skeleton, mode: Mode, scales: Option<&[f32]>) -> Result<Vec<u8>> {
    let mut values: Vec<Value> = Vec::new();
    let mut nodes: Vec<Node> = Vec::new();
    let mut tensors: Vec<TensorData> = Vec::new();
    let int8 = mode == Mode::Int8;
    // Emitted value for each skeleton value, per dtype.
    let mut as_f32: HashMap<usize, usize> = HashMap::new();
    let mut as_i8: HashMap<usize, usize> = HashMap::new();
    let mut sc: Vec<f32> = scales.map(|s| s.to_vec()).unwrap_or_default();
    let new_value =
        |values: &mut Vec<Value>, name: String, shape: Vec<usize>, dtype: DType, scale: f32| {
            values.push(Value {
                name,
                shape,
                dtype,
                scale: if dtype == DType::I8 { scale } else { 0.0 },
            });
            values.len() - 1
        };
    let mut inputs = Vec::new();
    for &v in &sk.inputs {
        let (n, s) = &sk.values[v];
        let id = new_value(&mut values, n.clone(), s.clone(), DType::F32, 0.0);
        as_f32.insert(v, id);
        inputs.push(id);
    }
    // Fetch skeleton value `v` as `dtype`, inserting a conversion node.
    let get = |values: &mut Vec<Value>,
               nodes: &mut Vec<Node>,
               as_f32: &mut HashMap<usize, usize>,
               as_i8: &mut HashMap<usize, usize>,
               sc: &[f32],
               v: usize,
               dtype: DType|
     -> Result<usize> {
        let (have, other) = match dtype {
            DType::F32 => (as_f32.get(&v).copied(), as_i8.get(&v).copied()),
            DType::I8 => (as_i8.get(&v).copied(), as_f32.get(&v).copied()),
        };
        if let Some(id) = have {
            return Ok(id);
        }
        let src = other
            .ok_or_else(|| anyhow!("value \"{}\" used before it is produced", sk.values[v].0))?;
        let (n, s) = &sk.values[v];
        let (suffix, op) = match dtype {
            DType::F32 => (":f32", Op::Dequantize),
            DType::I8 => (":q", Op::Quantize),
        };
        let scale = sc.get(v).copied().unwrap_or(1.0 / 127.0);
        let id = new_value(values, format!("{n}{suffix}"), s.clone(), dtype, scale);
        nodes.push(Node {
            name: format!("{n}{suffix}"),
            op,
            inputs: vec![src],
            output: id,
        });
        match dtype {
            DType::F32 => as_f32.insert(v, id),
            DType::I8 => as_i8.insert(v, id),
        };
        Ok(id)
    };
    let act_dtype = if int8 { DType::I8 } else { DType::F32 };
    for n in &sk.nodes {
        let (in_dt, out_dt) = match n.op {
            Op::Softmax { .. } => (DType::F32, DType::F32),
            _ => (act_dtype, act_dtype),
        };
        if int8 && keeps_scale(&n.op) {
            sc[n.output] = sc[n.inputs[0]];
        }
        let ins = n
            .inputs
            .iter()
            .map(|&v| {
                get(
                    &mut values,
                    &mut nodes,
                    &mut as_f32,
                    &mut as_i8,
                    &sc,
                    v,
                    in_dt,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let (name, shape) = &sk.values[n.output];
        let scale = sc.get(n.output).copied().unwrap_or(0.0);
        let out = new_value(&mut values, name.clone(), shape.clone(), out_dt, scale);
        match out_dt {
            DType::F32 => as_f32.insert(n.output, out),
            DType::I8 => as_i8.insert(n.output, out),
        };
        let mut op = n.op.clone();
        if let (Some((src, rows, k)), Some(w)) = (&n.weight, op.weight().cloned()) {
            match src {
                WeightSrc::Shift { packed, scales } => {
                    tensors.push(TensorData {
                        name: w.tensor.clone(),
                        dtype: Dtype::U8,
                        shape: vec![*rows, packed.len() / rows.max(&1)],
                        data: Cow::Owned(packed.clone()),
                    });
                    tensors.push(TensorData {
                        name: w.scale.clone(),
                        dtype: Dtype::F32,
                        shape: vec![*rows],
                        data: Cow::Owned(f32_bytes(scales)),
                    });
                }
                WeightSrc::Kept { w: wf, q, qscales } => {
                    let (kind, data, dtype, s) = if int8 {
                        (
                            WeightKind::I8,
                            bytemuck::cast_slice(q).to_vec(),
                            Dtype::I8,
                            qscales.clone(),
                        )
                    } else {
                        (WeightKind::F32, f32_bytes(wf), Dtype::F32, vec![1.0; *rows])
                    };
                    tensors.push(TensorData {
                        name: w.tensor.clone(),
                        dtype,
                        shape: vec![*rows, *k],
                        data: Cow::Owned(data),
                    });
                    tensors.push(TensorData {
                        name: w.scale.clone(),
                        dtype: Dtype::F32,
                        shape: vec![*rows],
                        data: Cow::Owned(f32_bytes(&s)),
                    });
                    if let Op::Conv { weight, .. } | Op::Linear { weight, .. } = &mut op {
                        weight.kind = kind;
                    }
                }
            }
        }
        nodes.push(Node {
            name: n.name.clone(),
            op,
            inputs: ins,
            output: out,
        });
    }
    let mut outputs = Vec::new();
    for &v in &sk.outputs {
        outputs.push(get(
            &mut values,
            &mut nodes,
            &mut as_f32,
            &mut as_i8,
            &sc,
            v,
            DType::F32,
        )?);
    }
    for (name, shape, data) in &sk.tensors {
        tensors.push(TensorData {
            name: name.clone(),
            dtype: Dtype::F32,
            shape: shape.clone(),
            data: Cow::Owned(f32_bytes(data)),
        });
    }
    let mut graph = Graph {
        format: FORMAT_NAME.into(),
        version: FORMAT_VERSION,
        mode,
        values,
        inputs,
        outputs,
        nodes,
        arena_bytes: 0,
        fingerprint: String::new(),
    };
    graph.arena_bytes = planner::plan(&graph).arena_bytes;
    let first = format::write(&graph, &tensors).map_err(|e| anyhow!("{e}"))?;
    let fp = Model::from_vec(&first)
        .map_err(|e| anyhow!("lowered model does not load: {e}"))?
        .fingerprint();
    graph.fingerprint = format!("{fp:016x}");
    format::write(&graph, &tensors).map_err(|e| anyhow!("{e}"))
}

/// Per-value absolute ranges from the float-mode shift model on `calib`.
fn calibrate(
    sk: &Skeleton,
    float_model: &[u8],
    calib: &CalibData,
    method: CalibMethod,
    opts: &ConvertOptions,
) -> Result<Vec<f32>> {
    let model = Model::from_vec(float_model).map_err(|e| anyhow!("{e}"))?;
    let in_len = model.input_len(0);
    if calib.x.len() != calib.n * in_len || calib.n == 0 {
        bail!("calibration data holds {} values for {} samples; the model input has {in_len} values per sample", calib.x.len(), calib.n);
    }
    if sk.inputs.len() != 1 {
        bail!("calibration supports single-input models");
    }
    let nodes: Vec<usize> = sk.nodes.iter().map(|n| n.output).collect();
    let nv = sk.values.len();
    // Pass 1: absolute maxima. Pass 2 (percentile): histograms.
    let passes = if matches!(method, CalibMethod::Percentile(_)) {
        2
    } else {
        1
    };
    let mut amax = vec![0f32; nv];
    const BINS: usize = 4096;
    let mut hist = vec![vec![0u64; BINS]; if passes == 2 { nv } else { 0 }];
    let out_lens: Vec<usize> = (0..model.graph().outputs.len())
        .map(|i| model.output_len(i))
        .collect();
    // The reference kernels make the ranges, hence the file, the same on
    // every CPU (SIMD float sums differ in the last bits). Samples run in
    // parallel, one session each; maxima and histogram counts merge in any
    // order to the same result.
    // One session (and output buffer) per thread, made once.
    let threads = rayon::current_num_threads().max(1).min(calib.n);
    let mut workers = (0..threads)
        .map(|_| {
            let mut session = Session::new(&model).map_err(|e| anyhow!("{e}"))?;
            session.set_reference_kernels(true);
            let outs: Vec<Vec<f32>> = out_lens.iter().map(|&n| vec![0.0; n]).collect();
            Ok((session, outs))
        })
        .collect::<Result<Vec<_>>>()?;
    for pass in 0..passes {
        let mut s0 = 0;
        while s0 < calib.n {
            let s1 = calib.n.min(s0 + threads);
            let parts: Vec<(Vec<f32>, Vec<Vec<u64>>)> = workers[..s1 - s0]
                .par_iter_mut()
                .zip(s0..s1)
                .map(|((session, outs), s)| {
                    let x = &calib.x[s * in_len..(s + 1) * in_len];
                    let mut amax_s = if pass == 0 {
                        vec![0f32; nv]
                    } else {
                        amax.clone()
                    };
                    let mut hist_s = vec![vec![0u64; BINS]; if pass == 1 { nv } else { 0 }];
                    let mut record = |v: usize, data: &[f32]| {
                        if pass == 0 {
                            amax_s[v] = data.iter().fold(amax_s[v], |m, &x| {
                                if x.is_finite() {
                                    m.max(x.abs())
                                } else {
                                    m
                                }
                            });
                        } else if amax_s[v] > 0.0 {
                            let h = &mut hist_s[v];
                            for &x in data {
                                let b = ((x.abs() / amax_s[v]) * (BINS as f32 - 1.0)) as usize;
                                h[b.min(BINS - 1)] += 1;
                            }
                        }
                    };
                    record(sk.inputs[0], x);
                    let mut out_refs: Vec<&mut [f32]> =
                        outs.iter_mut().map(|v| v.as_mut_slice()).collect();
                    let mut obs = |i: usize, view: shiftnn_runtime::ValueView<'_>| {
                        if let shiftnn_runtime::ValueView::F32(d) = view {
                            record(nodes[i], d);
                        }
                    };
                    session
                        .run_observed(&[x], &mut out_refs, Some(&mut obs))
                        .map_err(|e| anyhow!("{e}"))?;
                    Ok((amax_s, hist_s))
                })
                .collect::<Result<_>>()?;
            for (a, h) in parts {
                if pass == 0 {
                    for (m, v) in amax.iter_mut().zip(a) {
                        *m = m.max(v);
                    }
                } else {
                    for (hv, hs) in hist.iter_mut().zip(h) {
                        for (t, c) in hv.iter_mut().zip(hs) {
                            *t += c;
                        }
                    }
                }
            }
            if let Some(p) = opts.progress {
                p(pass * calib.n + s1, passes * calib.n);
            }
            s0 = s1;
        }
    }
    let mut range = amax.clone();
    if let CalibMethod::Percentile(p) = method {
        for v in 0..nv {
            let h = &hist[v];
            let total: u64 = h.iter().sum();
            if total == 0 {
                continue;
            }
            let target = (total as f64 * p / 100.0).ceil() as u64;
            let mut acc = 0;
            for (b, &c) in h.iter().enumerate() {
                acc += c;
                if acc >= target {
                    range[v] = amax[v] * (b + 1) as f32 / BINS as f32;
                    break;
                }
            }
        }
    }
    Ok(range
        .iter()
        .map(|&r| {
            if r > 0.0 && r.is_finite() {
                r / 127.0
            } else {
                1.0 / 127.0
            }
        })
        .collect())
}

/// Most output positions per calibration input whose im2col patches enter a
/// conv layer's input statistics: bounds the cost on large feature maps
/// (positions are taken at an even stride).
const STATS_POSITIONS: usize = 256;

/// Input mean and covariance of every shift layer (weighted, not kept), from
/// the float reference executor on the calibration inputs. These are the
/// inputs of the float model, so each layer is fitted to its own float
/// input independently of the others.
fn layer_input_stats(
    g: &ir::Graph,
    keep: &BTreeSet<String>,
    calib: &CalibData,
    opts: &ConvertOptions,
) -> Result<HashMap<String, InputStats>> {
    let targets: Vec<&ir::Node> = g
        .nodes
        .iter()
        .filter(|n| {
            matches!(n.op, IrOp::Conv { .. } | IrOp::Linear { .. }) && !keep.contains(&n.name)
        })
        .collect();
    if targets.is_empty() {
        return Ok(HashMap::new());
    }
    if g.inputs.len() != 1 {
        bail!("calibration supports single-input models");
    }
    let (in_name, in_shape) = &g.inputs[0];
    let in_len: usize = in_shape.iter().product();
    if calib.n == 0 || calib.x.len() != calib.n * in_len {
        bail!("calibration data holds {} values for {} samples; the model input has {in_len} values per sample", calib.x.len(), calib.n);
    }
    let shape_of = |v: &str| {
        g.shapes
            .get(v)
            .cloned()
            .ok_or_else(|| anyhow!("no shape for tensor \"{v}\""))
    };
    let mut accs = Vec::new();
    for n in &targets {
        let (w, groups) = match &n.op {
            IrOp::Conv { weight, groups, .. } => (weight, *groups),
            IrOp::Linear { weight, .. } => (weight, 1),
            _ => unreachable!("filtered to Conv and Linear"),
        };
        let rows = w.shape[0];
        if groups == 0 || rows % groups != 0 {
            bail!(
                "node \"{}\": {rows} output channels in {groups} groups",
                n.name
            );
        }
        accs.push(InputStats::accumulator(groups, w.len() / rows.max(1)));
    }
    for s in 0..calib.n {
        let x = &calib.x[s * in_len..(s + 1) * in_len];
        let acts = crate::reference::run_all(g, &[(in_name.as_str(), x)])
            .map_err(|e| anyhow!("calibration sample {s}: {e}"))?;
        for (n, acc) in targets.iter().zip(accs.iter_mut()) {
            let input = n
                .inputs
                .first()
                .ok_or_else(|| anyhow!("node \"{}\" has no input", n.name))?;
            let xa = acts
                .get(input)
                .ok_or_else(|| anyhow!("no activation \"{input}\" for node \"{}\"", n.name))?;
            let xs = shape_of(input)?;
            match &n.op {
                IrOp::Conv {
                    weight,
                    window,
                    groups,
                    ..
                } => {
                    let os = shape_of(&n.output)?;
                    if xs.len() != 4 || os.len() != 4 || xs[0] * xs[1] * xs[2] * xs[3] != xa.len() {
                        bail!(
                            "node \"{}\": conv input {xs:?} / output {os:?} is not NCHW",
                            n.name
                        );
                    }
                    let (c, h, wd) = (xs[1], xs[2], xs[3]);
                    let cin_g = c / groups;
                    let [kh, kw] = window.kernel;
                    if weight.len() / weight.shape[0].max(1) != cin_g * kh * kw {
                        bail!(
                            "node \"{}\": weight shape {:?} does not match its input {xs:?}",
                            n.name,
                            weight.shape
                        );
                    }
                    let positions = xs[0] * os[2] * os[3];
                    let step = positions.div_ceil(STATS_POSITIONS).max(1);
                    let mut patch = vec![0f32; cin_g * kh * kw];
                    for pos in (0..positions).step_by(step) {
                        let (b, oy, ox) =
                            (pos / (os[2] * os[3]), (pos / os[3]) % os[2], pos % os[3]);
                        for gi in 0..*groups {
                            for icg in 0..cin_g {
                                let plane = &xa[(b * c + gi * cin_g + icg) * h * wd..][..h * wd];
                                for ky in 0..kh {
                                    for kx in 0..kw {
                                        let iy = (oy * window.strides[0] + ky * window.dilations[0])
                                            as isize
                                            - window.pads[0] as isize;
                                        let ix = (ox * window.strides[1] + kx * window.dilations[1])
                                            as isize
                                            - window.pads[1] as isize;
                                        patch[(icg * kh + ky) * kw + kx] = if iy >= 0
                                            && ix >= 0
                                            && (iy as usize) < h
                                            && (ix as usize) < wd
                                        {
                                            plane[iy as usize * wd + ix as usize]
                                        } else {
                                            0.0
                                        };
                                    }
                                }
                            }
                            acc.add(gi, &patch);
                        }
                    }
                }
                IrOp::Linear { weight, .. } => {
                    let k = weight.len() / weight.shape[0].max(1);
                    if k == 0 || xa.len() % k != 0 {
                        bail!(
                            "node \"{}\": input of {} values for {k} features",
                            n.name,
                            xa.len()
                        );
                    }
                    for v in xa.chunks_exact(k) {
                        acc.add(0, v);
                    }
                }
                _ => unreachable!("filtered to Conv and Linear"),
            }
        }
        if let Some(p) = opts.progress {
            p(s + 1, calib.n);
        }
    }
    Ok(targets
        .iter()
        .zip(accs)
        .filter_map(|(n, acc)| acc.finish().map(|st| (n.name.clone(), st)))
        .collect())
}

/// Convert a float IR graph into a `.shift` file image.
pub fn convert(g: &ir::Graph, opts: &ConvertOptions) -> Result<(Vec<u8>, ConvertReport)> {
    let keep: BTreeSet<String> = opts
        .keep
        .clone()
        .unwrap_or_else(|| default_keep(g))
        .into_iter()
        .collect();
    let names: BTreeSet<&str> = g.nodes.iter().map(|n| n.name.as_str()).collect();
    for k in &keep {
        if !names.contains(k.as_str()) {
            bail!("--keep {k}: no layer of that name (see `shiftnn check`)");
        }
    }
    let mut layers = Vec::new();
    let mut kept_i8_sqnr = BTreeMap::new();
    let stats = match &opts.calib {
        Some(calib) => layer_input_stats(g, &keep, calib, opts)?,
        None => HashMap::new(),
    };
    let (sk, fused) = skeleton(g, opts.bits, &keep, &stats, &mut layers, &mut kept_i8_sqnr)?;
    let float_model = emit(&sk, Mode::Float, None).context("lowering to float mode")?;
    let bytes = match opts.mode {
        Mode::Float => float_model,
        Mode::Int8 => {
            let calib = opts.calib.as_ref().ok_or_else(|| {
                anyhow!("int8 mode needs calibration data: pass --calib X.npy with a batch of representative inputs")
            })?;
            let scales = calibrate(&sk, &float_model, calib, opts.calib_method, opts)?;
            for l in layers.iter_mut().filter(|l| l.weights == "f32") {
                // Kept layers hold int8 weights (1 byte each) plus the same
                // per-channel scales.
                l.weights = "i8".into();
                l.bits = 8;
                l.bytes -= l.params * 3;
                l.sqnr_db = kept_i8_sqnr.get(&l.name).copied().filter(|s| s.is_finite());
                l.lossless = l.sqnr_db.is_none();
            }
            emit(&sk, Mode::Int8, Some(&scales)).context("lowering to int8 mode")?
        }
    };
    let model =
        Model::from_vec(&bytes).map_err(|e| anyhow!("converted model does not load: {e}"))?;
    let report = ConvertReport {
        layers,
        nodes: model.graph().nodes.len(),
        fused,
        arena_bytes: model.arena_bytes(),
        file_bytes: bytes.len(),
    };
    Ok((bytes, report))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{Graph as IrGraph, Node as IrNode, Tensor, Window};

    fn lcg(seed: u64) -> impl FnMut() -> f32 {
        let mut s = seed;
        move || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        }
    }

    /// A graph with one grouped, strided, padded conv: input [1,4,7,6],
    /// weight [6,2,3,3], groups 2, stride 2, pads (1,0,1,2).
    fn conv_graph(w: Vec<f32>) -> IrGraph {
        let window = Window {
            kernel: [3, 3],
            strides: [2, 2],
            pads: [1, 0, 1, 2],
            dilations: [1, 1],
        };
        let mut shapes = BTreeMap::new();
        shapes.insert("x".to_string(), vec![1, 4, 7, 6]);
        shapes.insert("y".to_string(), vec![1, 6, 4, 3]);
        IrGraph {
            inputs: vec![("x".into(), vec![1, 4, 7, 6])],
            outputs: vec!["y".into()],
            nodes: vec![IrNode {
                name: "conv".into(),
                op: IrOp::Conv {
                    weight: Tensor::new(vec![6, 2, 3, 3], w),
                    bias: None,
                    window,
                    groups: 2,
                },
                inputs: vec!["x".into()],
                output: "y".into(),
            }],
            shapes,
        }
    }

    /// The im2col statistics must predict the conv's real output error:
    /// for a weight change `e` of row `r`, the output changes by `e·x` at
    /// every position, whose mean over positions and samples is `e·μ` and
    /// whose variance is `eᵀ C e`. Checked against the reference executor.
    #[test]
    fn conv_input_stats_predict_output_change() {
        let mut r = lcg(1);
        let w: Vec<f32> = (0..6 * 18).map(|_| r()).collect();
        let e: Vec<f32> = (0..6 * 18).map(|_| r() * 0.1).collect();
        let w2: Vec<f32> = w.iter().zip(&e).map(|(a, b)| a + b).collect();
        let (g1, g2) = (conv_graph(w), conv_graph(w2));
        let n = 20;
        let x: Vec<f32> = (0..n * 4 * 7 * 6).map(|_| r().max(0.0)).collect();
        let calib = CalibData { x: x.clone(), n };
        let opts = ConvertOptions {
            bits: Bits::B3,
            mode: Mode::Float,
            keep: Some(vec![]),
            calib: None,
            calib_method: CalibMethod::MinMax,
            progress: None,
        };
        let stats = layer_input_stats(&g1, &BTreeSet::new(), &calib, &opts).unwrap();
        let st = &stats["conv"];
        assert_eq!((st.k, st.cov.len()), (18, 2));
        let positions = 4 * 3;
        for row in 0..6 {
            let mut d = Vec::new();
            for s in 0..n {
                let xs = &x[s * 168..(s + 1) * 168];
                let y1 = crate::reference::run(&g1, &[("x", xs)]).unwrap().remove(0);
                let y2 = crate::reference::run(&g2, &[("x", xs)]).unwrap().remove(0);
                for p in 0..positions {
                    let i = row * positions + p;
                    d.push((y2[i] - y1[i]) as f64);
                }
            }
            let m = d.iter().sum::<f64>() / d.len() as f64;
            let v = d.iter().map(|t| (t - m).powi(2)).sum::<f64>() / d.len() as f64;
            let er: Vec<f64> = e[row * 18..(row + 1) * 18]
                .iter()
                .map(|&t| t as f64)
                .collect();
            let g = row / 3;
            let pm: f64 = er.iter().zip(&st.mean[g]).map(|(a, b)| a * b).sum();
            let pv = st.output_err(g, &er);
            assert!((m - pm).abs() < 1e-4, "row {row}: mean {m} vs {pm}");
            assert!(
                (v - pv).abs() < 1e-4 * v.max(1e-3),
                "row {row}: var {v} vs {pv}"
            );
        }
    }
}
