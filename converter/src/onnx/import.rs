//! The importer proper: graph structure checks, topological order, constant
//! folding, shape inference and lowering to IR operators.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};

use prost::Message;

use super::attrs::Attrs;
use super::proto::{data_type as dt, ModelProto, NodeProto, ValueInfoProto};
use super::tensor::{self, norm_axis, numel, Const, Data, MAX_ELEMS, MAX_FOLD_ELEMS};
use super::{CheckReport, NodeReport, OnnxError, MAX_OPSET, MIN_OPSET, SUPPORTED_OPS};
use crate::ir::{Graph, Node, Op, Tensor, Window};
use crate::reference::output_shape;

/// What an ONNX tensor name stands for during import.
#[derive(Clone, Debug)]
enum Value {
    /// Known at import time.
    Const(Const),
    /// An activation of the IR graph (by IR name).
    Act(String),
    /// Produced by a node that failed (check mode only); holds its name.
    Poisoned(String),
}

/// Operators folded when all their inputs are constant.
const FOLDABLE: &[&str] = &[
    "Identity",
    "Dropout",
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Gather",
    "Unsqueeze",
    "Squeeze",
    "Flatten",
    "Reshape",
    "Concat",
    "Cast",
    "Slice",
    "Transpose",
    "ConstantOfShape",
];

struct Ctx {
    opset: i64,
    values: HashMap<String, Value>,
    /// Uses of each ONNX tensor (node inputs and graph outputs).
    uses: HashMap<String, usize>,
    graph: Graph,
    /// Every tensor name in use (ONNX and generated).
    tensor_names: HashSet<String>,
    /// Every node name in use.
    node_names: HashSet<String>,
    /// The ONNX node being lowered and how many IR nodes it produced.
    cur_node: String,
    cur_count: usize,
}

fn model_err(msg: impl Into<String>) -> OnnxError {
    OnnxError::Model(msg.into())
}

fn default_opset(model: &ModelProto) -> Result<i64, OnnxError> {
    let mut found = None;
    for o in &model.opset_import {
        if o.domain.is_empty() || o.domain == "ai.onnx" {
            if found.is_some_and(|v| v != o.version) {
                return Err(model_err(
                    "the model imports the default ONNX domain twice with different versions",
                ));
            }
            found = Some(o.version);
        }
    }
    let v =
        found.ok_or_else(|| model_err("the model imports no opset of the default ONNX domain"))?;
    if !(MIN_OPSET..=MAX_OPSET).contains(&v) {
        return Err(model_err(format!(
            "opset version {v} is not supported (supported: {MIN_OPSET} to {MAX_OPSET}); re-export the model with a supported opset"
        )));
    }
    Ok(v)
}

/// Static shape of a graph input: a dynamic or zero first (batch) dimension
/// becomes 1; every other dimension must be static and positive.
fn input_shape(vi: &ValueInfoProto) -> Result<Vec<usize>, OnnxError> {
    let name = &vi.name;
    let tt = vi
        .r#type
        .as_ref()
        .and_then(|t| t.tensor_type.as_ref())
        .ok_or_else(|| {
            model_err(format!(
                "graph input \"{name}\" is not a tensor (or has no type)"
            ))
        })?;
    if ![dt::FLOAT, dt::UNDEFINED].contains(&tt.elem_type) {
        return Err(model_err(format!(
            "graph input \"{name}\" has element type {}; only FLOAT inputs are supported",
            dt::name(tt.elem_type)
        )));
    }
    let shape = tt.shape.as_ref().ok_or_else(|| {
        model_err(format!(
            "graph input \"{name}\" has no shape; a static shape is required"
        ))
    })?;
    if shape.dim.len() > 16 {
        return Err(model_err(format!(
            "graph input \"{name}\" has rank {}",
            shape.dim.len()
        )));
    }
    let mut out = Vec::with_capacity(shape.dim.len());
    for (k, d) in shape.dim.iter().enumerate() {
        let v = match d.dim_value {
            Some(v) if v > 0 => v,
            Some(v) if v < 0 => {
                return Err(model_err(format!(
                    "graph input \"{name}\" has negative dimension {v}"
                )));
            }
            _ if k == 0 => 1,
            _ => {
                return Err(model_err(format!(
                    "graph input \"{name}\" dimension {k} is dynamic ({}); only the batch dimension may be dynamic",
                    d.dim_param.as_deref().map_or("unknown".to_string(), |p| format!("\"{p}\""))
                )));
            }
        };
        out.push(
            usize::try_from(v).map_err(|_| {
                model_err(format!("graph input \"{name}\": dimension {v} too large"))
            })?,
        );
    }
    numel(&out, MAX_ELEMS).map_err(|m| model_err(format!("graph input \"{name}\": {m}")))?;
    Ok(out)
}

/// Imports a model; in check mode, keeps going after node errors and returns
/// a report.
pub(crate) fn import(bytes: &[u8], check: bool) -> Result<(Graph, Option<CheckReport>), OnnxError> {
    let model = ModelProto::decode(bytes).map_err(|e| OnnxError::Decode(e.to_string()))?;
    let opset = default_opset(&model)?;
    let g = model
        .graph
        .as_ref()
        .ok_or_else(|| model_err("the model has no graph"))?;

    let mut values: HashMap<String, Value> = HashMap::new();
    for t in &g.initializer {
        if t.name.is_empty() {
            return Err(model_err("an initializer has no name"));
        }
        let c = tensor::from_proto(t).map_err(|msg| OnnxError::Tensor {
            name: t.name.clone(),
            msg,
        })?;
        if values.insert(t.name.clone(), Value::Const(c)).is_some() {
            return Err(model_err(format!(
                "initializer \"{}\" is defined twice",
                t.name
            )));
        }
    }
    let mut graph = Graph::default();
    for vi in &g.input {
        if values.contains_key(&vi.name) {
            // IR < 4 lists initializers as inputs too: they are constants.
            if !graph.inputs.iter().any(|(n, _)| n == &vi.name) {
                continue;
            }
            return Err(model_err(format!(
                "graph input \"{}\" is listed twice",
                vi.name
            )));
        }
        if vi.name.is_empty() {
            return Err(model_err("a graph input has no name"));
        }
        let shape = input_shape(vi)?;
        values.insert(vi.name.clone(), Value::Act(vi.name.clone()));
        graph.shapes.insert(vi.name.clone(), shape.clone());
        graph.inputs.push((vi.name.clone(), shape));
    }

    // Unique node names.
    let mut node_names: HashSet<String> = HashSet::new();
    let explicit: HashSet<&str> = g
        .node
        .iter()
        .map(|n| n.name.as_str())
        .filter(|n| !n.is_empty())
        .collect();
    let mut names = Vec::with_capacity(g.node.len());
    for (i, n) in g.node.iter().enumerate() {
        let base = if n.name.is_empty() {
            format!("{}_{i}", n.op_type)
        } else {
            n.name.clone()
        };
        let mut name = base.clone();
        let mut k = 1;
        while node_names.contains(&name) || (n.name.is_empty() && explicit.contains(name.as_str()))
        {
            k += 1;
            name = format!("{base}_{k}");
        }
        node_names.insert(name.clone());
        names.push(name);
    }
    let node_err = |i: usize, msg: String| OnnxError::Node {
        node: names[i].clone(),
        op: g.node[i].op_type.clone(),
        msg,
    };

    // Producers, duplicate outputs, missing inputs.
    let mut producer: HashMap<&str, usize> = HashMap::new();
    for (i, n) in g.node.iter().enumerate() {
        for o in n.output.iter().filter(|o| !o.is_empty()) {
            if values.contains_key(o) {
                return Err(node_err(
                    i,
                    format!("output \"{o}\" has the same name as a graph input or initializer"),
                ));
            }
            if let Some(j) = producer.insert(o, i) {
                return Err(model_err(format!(
                    "tensor \"{o}\" is produced twice (by nodes \"{}\" and \"{}\")",
                    names[j], names[i]
                )));
            }
        }
    }
    for (i, n) in g.node.iter().enumerate() {
        for x in n.input.iter().filter(|x| !x.is_empty()) {
            if !values.contains_key(x) && !producer.contains_key(x.as_str()) {
                return Err(node_err(
                    i,
                    format!(
                        "input \"{x}\" is not produced by any node, initializer or graph input"
                    ),
                ));
            }
        }
    }
    if g.output.is_empty() {
        return Err(model_err("the graph has no outputs"));
    }
    for o in &g.output {
        if !values.contains_key(&o.name) && !producer.contains_key(o.name.as_str()) {
            return Err(model_err(format!(
                "graph output \"{}\" is not produced by any node, initializer or graph input",
                o.name
            )));
        }
    }

    // Topological order (Kahn, stable: file order among ready nodes).
    let mut pending: Vec<usize> = vec![0; g.node.len()];
    let mut consumers: Vec<Vec<usize>> = vec![Vec::new(); g.node.len()];
    for (i, n) in g.node.iter().enumerate() {
        let mut deps: HashSet<usize> = HashSet::new();
        for x in n.input.iter().filter(|x| !x.is_empty()) {
            if let Some(&p) = producer.get(x.as_str()) {
                deps.insert(p);
            }
        }
        pending[i] = deps.len();
        for p in deps {
            consumers[p].push(i);
        }
    }
    let mut ready: BinaryHeap<Reverse<usize>> = (0..g.node.len())
        .filter(|&i| pending[i] == 0)
        .map(Reverse)
        .collect();
    let mut order = Vec::with_capacity(g.node.len());
    while let Some(Reverse(i)) = ready.pop() {
        order.push(i);
        for &c in &consumers[i] {
            pending[c] -= 1;
            if pending[c] == 0 {
                ready.push(Reverse(c));
            }
        }
    }
    if order.len() != g.node.len() {
        let i = (0..g.node.len())
            .find(|&i| pending[i] > 0)
            .expect("a node is left");
        let x = g.node[i]
            .input
            .iter()
            .find(|x| producer.get(x.as_str()).is_some_and(|&p| pending[p] > 0))
            .cloned()
            .unwrap_or_default();
        return Err(model_err(format!(
            "the graph has a cycle: node \"{}\" ({}) depends on tensor \"{x}\", which depends on the node itself",
            names[i], g.node[i].op_type
        )));
    }

    let mut uses: HashMap<String, usize> = HashMap::new();
    for n in &g.node {
        for x in n.input.iter().filter(|x| !x.is_empty()) {
            *uses.entry(x.clone()).or_default() += 1;
        }
    }
    for o in &g.output {
        *uses.entry(o.name.clone()).or_default() += 1;
    }
    let mut tensor_names: HashSet<String> = values.keys().cloned().collect();
    tensor_names.extend(producer.keys().map(|s| s.to_string()));

    let mut ctx = Ctx {
        opset,
        values,
        uses,
        graph,
        tensor_names,
        node_names,
        cur_node: String::new(),
        cur_count: 0,
    };
    let mut reports: Vec<Option<NodeReport>> = vec![None; g.node.len()];
    for &i in &order {
        let n = &g.node[i];
        let poisoned = n.input.iter().find_map(|x| match ctx.values.get(x) {
            Some(Value::Poisoned(from)) => Some((x.clone(), from.clone())),
            _ => None,
        });
        let (supported, reason, poison) = if let Some((x, from)) = poisoned {
            let known = SUPPORTED_OPS.contains(&n.op_type.as_str())
                && (n.domain.is_empty() || n.domain == "ai.onnx");
            let reason = if known {
                format!("not checked: input \"{x}\" comes from unsupported node \"{from}\"")
            } else {
                unsupported_op_msg(n)
            };
            (known, Some(reason), Some(from))
        } else {
            ctx.cur_node = names[i].clone();
            ctx.cur_count = 0;
            match ctx.node(n) {
                Ok(()) => (true, None, None),
                Err(msg) => {
                    if !check {
                        return Err(node_err(i, msg));
                    }
                    (false, Some(msg), Some(names[i].clone()))
                }
            }
        };
        if let Some(from) = poison {
            for o in n.output.iter().filter(|o| !o.is_empty()) {
                ctx.values.insert(o.clone(), Value::Poisoned(from.clone()));
            }
        }
        reports[i] = Some(NodeReport {
            name: names[i].clone(),
            op_type: n.op_type.clone(),
            supported,
            reason,
        });
    }

    let mut graph_errors = Vec::new();
    for o in &g.output {
        match ctx.values.get(&o.name) {
            Some(Value::Act(a)) => ctx.graph.outputs.push(a.clone()),
            Some(Value::Poisoned(_)) => {}
            _ => graph_errors.push(format!(
                "graph output \"{}\" is a constant (it does not depend on any graph input); not supported",
                o.name
            )),
        }
    }
    if !check {
        if let Some(e) = graph_errors.first() {
            return Err(model_err(e.clone()));
        }
    }
    let onnx_outputs: Vec<String> = g.output.iter().map(|o| o.name.clone()).collect();
    if graph_errors.is_empty() && ctx.graph.outputs.len() == onnx_outputs.len() {
        rename_outputs(&mut ctx.graph, &onnx_outputs);
        fuse(&mut ctx.graph);
        prune(&mut ctx.graph);
    }
    let report = check.then(|| CheckReport {
        opset,
        ir_version: model.ir_version,
        producer: model.producer_name.clone(),
        nodes: reports
            .into_iter()
            .map(|r| r.expect("every node visited"))
            .collect(),
        graph_errors,
    });
    Ok((ctx.graph, report))
}

fn unsupported_op_msg(n: &NodeProto) -> String {
    if !(n.domain.is_empty() || n.domain == "ai.onnx") {
        format!(
            "operator {} of domain \"{}\" is not supported (only the default ONNX domain)",
            n.op_type, n.domain
        )
    } else {
        format!("operator {} is not supported", n.op_type)
    }
}

type Ins = [Option<Value>];

fn req<'v>(n: &NodeProto, c: &'v [Option<&'v Const>], i: usize) -> Result<&'v Const, String> {
    c.get(i).copied().flatten().ok_or_else(|| {
        format!(
            "required input {i} is missing ({} inputs given)",
            n.input.len()
        )
    })
}

/// Output shape of Reshape with ONNX's 0 (copy, unless `allowzero`) and -1
/// (infer) conventions.
fn reshape_target(input: &[usize], spec: &[i64], allowzero: bool) -> Result<Vec<usize>, String> {
    let total = numel(input, usize::MAX)?;
    let mut out = Vec::with_capacity(spec.len());
    let mut infer = None;
    if spec.len() > 64 {
        return Err(format!("target shape of rank {} is too large", spec.len()));
    }
    for (k, &s) in spec.iter().enumerate() {
        match s {
            0 if !allowzero => {
                out.push(*input.get(k).ok_or_else(|| format!("shape {spec:?}: 0 at position {k} has no input dimension to copy from {input:?}"))?)
            }
            -1 => {
                if infer.replace(k).is_some() {
                    return Err(format!("shape {spec:?} has more than one -1"));
                }
                out.push(1);
            }
            s if s < 0 => return Err(format!("shape {spec:?} has invalid dimension {s}")),
            s => out.push(usize::try_from(s).map_err(|_| format!("dimension {s} too large"))?),
        }
    }
    let known = numel(&out, usize::MAX).map_err(|_| format!("shape {spec:?} is too large"))?;
    if let Some(k) = infer {
        if known == 0 || total % known != 0 {
            return Err(format!("cannot reshape {input:?} to {spec:?}"));
        }
        out[k] = total / known;
    } else if known != total {
        return Err(format!(
            "cannot reshape {input:?} ({total} elements) to {spec:?} ({known} elements)"
        ));
    }
    Ok(out)
}

fn unsqueeze_shape(input: &[usize], axes: &[i64]) -> Result<Vec<usize>, String> {
    let r = input.len() + axes.len();
    if r > 64 {
        return Err("rank too large".into());
    }
    let mut is_new = vec![false; r];
    for &a in axes {
        let a = norm_axis(a, r)?;
        if std::mem::replace(&mut is_new[a], true) {
            return Err(format!("axes {axes:?} repeat an axis"));
        }
    }
    let mut it = input.iter();
    Ok(is_new
        .iter()
        .map(|&new| if new { 1 } else { *it.next().expect("counted") })
        .collect())
}

fn squeeze_shape(input: &[usize], axes: Option<&[i64]>) -> Result<Vec<usize>, String> {
    match axes {
        None => Ok(input.iter().copied().filter(|&d| d != 1).collect()),
        Some(axes) => {
            let mut drop = vec![false; input.len()];
            for &a in axes {
                let k = norm_axis(a, input.len())?;
                if input[k] != 1 {
                    return Err(format!(
                        "cannot squeeze axis {a} of size {} in {input:?}",
                        input[k]
                    ));
                }
                drop[k] = true;
            }
            Ok(input
                .iter()
                .zip(&drop)
                .filter(|(_, &d)| !d)
                .map(|(&s, _)| s)
                .collect())
        }
    }
}

fn flatten_shape(input: &[usize], axis: i64) -> Result<Vec<usize>, String> {
    let r = input.len() as i64;
    if axis < -r || axis > r {
        return Err(format!(
            "attribute \"axis\" = {axis} is out of range for rank {r}"
        ));
    }
    let a = if axis < 0 { axis + r } else { axis } as usize;
    Ok(vec![
        input[..a].iter().product(),
        input[a..].iter().product(),
    ])
}

/// Explicit pads (top, left, bottom, right) after resolving `auto_pad`.
fn resolve_pads(
    a: &Attrs,
    hw: [usize; 2],
    kernel: [usize; 2],
    strides: [usize; 2],
    dil: [usize; 2],
) -> Result<[usize; 4], String> {
    let auto = a.string("auto_pad")?.unwrap_or_default();
    match auto.as_str() {
        "" | "NOTSET" => {
            let p = a.dims("pads", 4, 0, 0)?;
            Ok([p[0], p[1], p[2], p[3]])
        }
        "VALID" => Ok([0; 4]),
        "SAME_UPPER" | "SAME_LOWER" => {
            let mut p = [0; 4];
            for ax in 0..2 {
                let out = hw[ax].div_ceil(strides[ax]).max(1);
                let eff = (kernel[ax].max(1) - 1) * dil[ax] + 1;
                let total = ((out - 1) * strides[ax] + eff).saturating_sub(hw[ax]);
                let (b, e) = if auto == "SAME_UPPER" {
                    (total / 2, total - total / 2)
                } else {
                    (total - total / 2, total / 2)
                };
                p[ax] = b;
                p[ax + 2] = e;
            }
            Ok(p)
        }
        other => Err(format!(
            "attribute \"auto_pad\" = \"{other}\" is not supported"
        )),
    }
}

fn two(v: &[usize]) -> [usize; 2] {
    [v[0], v[1]]
}

/// Values of a constant that broadcasts over activation shape `s` either as
/// a scalar or per channel (axis 1): one value or `s[1]` values.
fn per_channel(s: &[usize], c: &Const) -> Result<Vec<f32>, String> {
    let bad = || {
        format!(
            "constant of shape {:?} does not broadcast per channel (axis 1) or as a scalar over the activation of shape {s:?}",
            c.shape
        )
    };
    if c.shape.len() > s.len() || c.is_empty() {
        return Err(bad());
    }
    let off = s.len() - c.shape.len();
    for (k, &d) in c.shape.iter().enumerate() {
        if d != 1 && !(k + off == 1 && d == s[1]) {
            return Err(bad());
        }
    }
    Ok(c.to_f32())
}

fn scalar_f32(c: &Const, what: &str) -> Result<f32, String> {
    if c.len() != 1 {
        return Err(format!("{what} must be a scalar, got shape {:?}", c.shape));
    }
    Ok(c.to_f32()[0])
}

impl Ctx {
    fn fresh_tensor(&mut self, base: &str) -> String {
        let mut k = 1;
        loop {
            let name = format!("{base}/{k}");
            if self.tensor_names.insert(name.clone()) {
                return name;
            }
            k += 1;
        }
    }

    /// Appends an IR node; checks shapes. Returns the output name.
    fn emit(&mut self, op: Op, inputs: Vec<String>, out: String) -> Result<String, String> {
        let shapes: Vec<&[usize]> = inputs
            .iter()
            .map(|x| {
                self.graph
                    .shapes
                    .get(x)
                    .map(|s| s.as_slice())
                    .ok_or_else(|| format!("internal: no shape for {x}"))
            })
            .collect::<Result<_, _>>()?;
        let s = output_shape(&op, &shapes)?;
        numel(&s, MAX_ELEMS)?;
        let name = if self.cur_count == 0 {
            self.cur_node.clone()
        } else {
            let mut k = self.cur_count + 1;
            loop {
                let nm = format!("{}/{k}", self.cur_node);
                if !self.node_names.contains(&nm) {
                    break nm;
                }
                k += 1;
            }
        };
        self.node_names.insert(name.clone());
        self.cur_count += 1;
        self.graph.shapes.insert(out.clone(), s);
        self.graph.nodes.push(Node {
            name,
            op,
            inputs,
            output: out.clone(),
        });
        Ok(out)
    }

    /// Emits the single IR node of an ONNX node, bound to its first output.
    fn emit_main(&mut self, n: &NodeProto, op: Op, inputs: Vec<String>) -> Result<(), String> {
        let out = n
            .output
            .first()
            .filter(|o| !o.is_empty())
            .ok_or("the node has no output")?
            .clone();
        self.emit(op, inputs, out.clone())?;
        self.values.insert(out.clone(), Value::Act(out));
        Ok(())
    }

    fn bind(&mut self, n: &NodeProto, v: Value) -> Result<(), String> {
        let out = n
            .output
            .first()
            .filter(|o| !o.is_empty())
            .ok_or("the node has no output")?;
        self.values.insert(out.clone(), v);
        Ok(())
    }

    /// Outputs from `from` on must be unused.
    fn extra_outputs_unused(&self, n: &NodeProto, from: usize) -> Result<(), String> {
        for (k, o) in n.output.iter().enumerate().skip(from) {
            if !o.is_empty() && self.uses.get(o).copied().unwrap_or(0) > 0 {
                return Err(format!(
                    "output {k} (\"{o}\") is used, but only the first output is supported"
                ));
            }
        }
        Ok(())
    }

    fn act(&self, n: &NodeProto, ins: &Ins, i: usize) -> Result<(String, Vec<usize>), String> {
        match ins.get(i) {
            Some(Some(Value::Act(a))) => {
                let s = self
                    .graph
                    .shapes
                    .get(a)
                    .ok_or_else(|| format!("internal: no shape for {a}"))?;
                Ok((a.clone(), s.clone()))
            }
            Some(Some(Value::Const(_))) => Err(format!(
                "input {i} (\"{}\") is a constant, but only an activation is supported there",
                n.input[i]
            )),
            _ => Err(format!("required input {i} is missing")),
        }
    }

    fn konst<'v>(&self, n: &NodeProto, ins: &'v Ins, i: usize) -> Result<&'v Const, String> {
        self.opt_konst(n, ins, i)?
            .ok_or_else(|| format!("required input {i} is missing"))
    }

    fn opt_konst<'v>(
        &self,
        n: &NodeProto,
        ins: &'v Ins,
        i: usize,
    ) -> Result<Option<&'v Const>, String> {
        match ins.get(i) {
            Some(Some(Value::Const(c))) => Ok(Some(c)),
            Some(Some(_)) => Err(format!(
                "input {i} (\"{}\") must be a constant (an initializer or computable from constants)",
                n.input[i]
            )),
            _ => Ok(None),
        }
    }

    /// Axes from the attribute (opset < `input_from`) or input 1.
    fn axes(&self, n: &NodeProto, ins: &Ins, input_from: i64) -> Result<Option<Vec<i64>>, String> {
        if self.opset < input_from {
            Attrs(n).ints("axes")
        } else {
            Ok(self.opt_konst(n, ins, 1)?.map(|c| c.to_i64()))
        }
    }

    /// Lowers or folds one node.
    fn node(&mut self, n: &NodeProto) -> Result<(), String> {
        if !(n.domain.is_empty() || n.domain == "ai.onnx") {
            return Err(unsupported_op_msg(n));
        }
        let op = n.op_type.as_str();
        let a = Attrs(n);
        let ins: Vec<Option<Value>> = n
            .input
            .iter()
            .map(|x| {
                if x.is_empty() {
                    None
                } else {
                    self.values.get(x).cloned()
                }
            })
            .collect();
        let all_const = ins.iter().all(|v| !matches!(v, Some(Value::Act(_))));

        match op {
            "Constant" => {
                let c = if let Some(t) = a.tensor("value")? {
                    tensor::from_proto(t).map_err(|m| format!("attribute \"value\": {m}"))?
                } else if let Some(f) = a.opt_float("value_float")? {
                    Const::f(vec![], vec![f])
                } else if let Some(v) = a.floats("value_floats")? {
                    Const::f(vec![v.len()], v)
                } else if let Some(i) = a.opt_int("value_int")? {
                    Const::i(vec![], vec![i])
                } else if let Some(v) = a.ints("value_ints")? {
                    Const::i(vec![v.len()], v)
                } else {
                    let which = n
                        .attribute
                        .first()
                        .map_or("none".to_string(), |x| format!("\"{}\"", x.name));
                    return Err(format!("attribute {which} is not supported (Constant needs value, value_float(s) or value_int(s))"));
                };
                return self.bind(n, Value::Const(c));
            }
            "Shape" => {
                let s = match ins.first() {
                    Some(Some(Value::Const(c))) => c.shape.clone(),
                    Some(Some(Value::Act(_))) => self.act(n, &ins, 0)?.1,
                    _ => return Err("required input 0 is missing".into()),
                };
                let r = s.len() as i64;
                let fix = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
                let start = fix(a.int("start", 0)?);
                let end = fix(a.int("end", r)?).max(start);
                let v: Vec<i64> = s[start..end].iter().map(|&d| d as i64).collect();
                return self.bind(n, Value::Const(Const::i(vec![v.len()], v)));
            }
            _ => {}
        }
        if all_const && FOLDABLE.contains(&op) {
            if op == "Dropout" {
                self.extra_outputs_unused(n, 1)?;
            }
            let c: Vec<Option<&Const>> = ins
                .iter()
                .map(|v| match v {
                    Some(Value::Const(c)) => Some(c),
                    _ => None,
                })
                .collect();
            let out = self.fold(n, &a, &c)?;
            numel(&out.shape, MAX_ELEMS)?;
            return self.bind(n, Value::Const(out));
        }
        if all_const && SUPPORTED_OPS.contains(&op) {
            return Err(format!(
                "{op} over constant inputs only is not supported (it cannot be folded)"
            ));
        }
        self.lower(n, &a, &ins)
    }

    fn fold(&self, n: &NodeProto, a: &Attrs, c: &[Option<&Const>]) -> Result<Const, String> {
        let op = n.op_type.as_str();
        let x = req(n, c, 0)?;
        match op {
            "Identity" | "Dropout" => Ok(x.clone()),
            "Add" | "Sub" | "Mul" | "Div" => tensor::binary(op, x, req(n, c, 1)?),
            "Gather" => tensor::gather(x, req(n, c, 1)?, a.int("axis", 0)?),
            "Unsqueeze" => {
                let axes = if self.opset < 13 {
                    a.ints("axes")?
                } else {
                    c.get(1).copied().flatten().map(|c| c.to_i64())
                };
                let axes = axes.ok_or("axes are required")?;
                Ok(x.reshaped(unsqueeze_shape(&x.shape, &axes)?))
            }
            "Squeeze" => {
                let axes = if self.opset < 13 {
                    a.ints("axes")?
                } else {
                    c.get(1).copied().flatten().map(|c| c.to_i64())
                };
                Ok(x.reshaped(squeeze_shape(&x.shape, axes.as_deref())?))
            }
            "Flatten" => Ok(x.reshaped(flatten_shape(&x.shape, a.int("axis", 1)?)?)),
            "Reshape" => {
                let spec = req(n, c, 1)?.to_i64();
                Ok(x.reshaped(reshape_target(
                    &x.shape,
                    &spec,
                    a.int("allowzero", 0)? != 0,
                )?))
            }
            "Concat" => {
                let parts: Vec<&Const> = (0..c.len())
                    .map(|i| req(n, c, i))
                    .collect::<Result<_, _>>()?;
                let axis = a.opt_int("axis")?.ok_or("attribute \"axis\" is required")?;
                tensor::concat(&parts, axis)
            }
            "Cast" => {
                let to = a.opt_int("to")?.ok_or("attribute \"to\" is required")? as i32;
                match to {
                    dt::FLOAT | dt::DOUBLE | dt::FLOAT16 | dt::BFLOAT16 => {
                        Ok(Const::f(x.shape.clone(), x.to_f32()))
                    }
                    dt::BOOL => Ok(Const::i(
                        x.shape.clone(),
                        x.to_f32().iter().map(|&v| (v != 0.0) as i64).collect(),
                    )),
                    dt::INT8
                    | dt::UINT8
                    | dt::INT16
                    | dt::UINT16
                    | dt::INT32
                    | dt::UINT32
                    | dt::INT64
                    | dt::UINT64 => Ok(Const::i(x.shape.clone(), x.to_i64())),
                    _ => Err(format!(
                        "attribute \"to\" = {to} ({}) is not supported",
                        dt::name(to)
                    )),
                }
            }
            "Slice" => {
                let (starts, ends, axes, steps) = if self.opset < 10 {
                    (
                        a.ints("starts")?
                            .ok_or("attribute \"starts\" is required")?,
                        a.ints("ends")?.ok_or("attribute \"ends\" is required")?,
                        a.ints("axes")?,
                        None,
                    )
                } else {
                    (
                        req(n, c, 1)?.to_i64(),
                        req(n, c, 2)?.to_i64(),
                        c.get(3).copied().flatten().map(|c| c.to_i64()),
                        c.get(4).copied().flatten().map(|c| c.to_i64()),
                    )
                };
                let axes = axes.unwrap_or_else(|| (0..starts.len() as i64).collect());
                let steps = steps.unwrap_or_else(|| vec![1; starts.len()]);
                tensor::slice(x, &starts, &ends, &axes, &steps)
            }
            "Transpose" => {
                let r = x.shape.len();
                let perm = a
                    .ints("perm")?
                    .unwrap_or_else(|| (0..r as i64).rev().collect());
                let perm: Vec<usize> = perm
                    .iter()
                    .map(|&p| usize::try_from(p).unwrap_or(usize::MAX))
                    .collect();
                tensor::transpose(x, &perm)
            }
            "ConstantOfShape" => {
                if !x.is_int() || x.shape.len() != 1 {
                    return Err(format!(
                        "input 0 must be a 1-D integer shape, got {:?}",
                        x.shape
                    ));
                }
                let shape = tensor::dims_to_shape(&x.to_i64())?;
                let len = numel(&shape, MAX_FOLD_ELEMS)?;
                let v = match a.tensor("value")? {
                    Some(t) => {
                        tensor::from_proto(t).map_err(|m| format!("attribute \"value\": {m}"))?
                    }
                    None => Const::f(vec![1], vec![0.0]),
                };
                if v.len() != 1 {
                    return Err(format!(
                        "attribute \"value\" must hold one value, got shape {:?}",
                        v.shape
                    ));
                }
                Ok(match v.data {
                    Data::F(f) => Const::f(shape, vec![f[0]; len]),
                    Data::I(i) => Const::i(shape, vec![i[0]; len]),
                })
            }
            _ => Err(format!("internal: {op} is not foldable")),
        }
    }

    /// Reshape (or alias, if the shape does not change) of an activation.
    fn reshape_to(
        &mut self,
        n: &NodeProto,
        x: String,
        from: &[usize],
        to: Vec<usize>,
    ) -> Result<(), String> {
        if from == to.as_slice() {
            self.bind(n, Value::Act(x))
        } else {
            self.emit_main(n, Op::Reshape { shape: to }, vec![x])
        }
    }

    fn lower(&mut self, n: &NodeProto, a: &Attrs, ins: &Ins) -> Result<(), String> {
        let op = n.op_type.as_str();
        match op {
            "Identity" => {
                let (x, _) = self.act(n, ins, 0)?;
                self.bind(n, Value::Act(x))
            }
            "Dropout" => {
                self.extra_outputs_unused(n, 1)?;
                let (x, _) = self.act(n, ins, 0)?;
                self.bind(n, Value::Act(x))
            }
            "Relu" | "Sigmoid" | "HardSwish" | "LeakyRelu" | "HardSigmoid" => {
                let (x, _) = self.act(n, ins, 0)?;
                let op = match op {
                    "Relu" => Op::Relu,
                    "Sigmoid" => Op::Sigmoid,
                    "HardSwish" => Op::HardSwish,
                    "LeakyRelu" => Op::LeakyRelu {
                        alpha: a.float("alpha", 0.01)?,
                    },
                    _ => Op::HardSigmoid {
                        alpha: a.float("alpha", 0.2)?,
                        beta: a.float("beta", 0.5)?,
                    },
                };
                self.emit_main(n, op, vec![x])
            }
            "Clip" => {
                let (x, _) = self.act(n, ins, 0)?;
                let (min, max) = if self.opset < 11 {
                    (
                        a.float("min", f32::NEG_INFINITY)?,
                        a.float("max", f32::INFINITY)?,
                    )
                } else {
                    let min = self
                        .opt_konst(n, ins, 1)?
                        .map(|c| scalar_f32(c, "min"))
                        .transpose()?;
                    let max = self
                        .opt_konst(n, ins, 2)?
                        .map(|c| scalar_f32(c, "max"))
                        .transpose()?;
                    (
                        min.unwrap_or(f32::NEG_INFINITY),
                        max.unwrap_or(f32::INFINITY),
                    )
                };
                if min.is_nan() || max.is_nan() || min > max {
                    return Err(format!("clip range [{min}, {max}] is not supported"));
                }
                self.emit_main(n, Op::Clip { min, max }, vec![x])
            }
            "Conv" => self.conv(n, a, ins),
            "MaxPool" | "AveragePool" => self.pool(n, a, ins),
            "GlobalAveragePool" => {
                let (x, s) = self.act(n, ins, 0)?;
                if s.len() != 4 {
                    return Err(format!("only 4-D NCHW input is supported, got {s:?}"));
                }
                self.emit_main(n, Op::GlobalAveragePool, vec![x])
            }
            "ReduceMean" => {
                let (x, s) = self.act(n, ins, 0)?;
                let axes = self
                    .axes(n, ins, 18)?
                    .ok_or("ReduceMean over all axes is not supported")?;
                let mut axes: Vec<usize> = axes
                    .iter()
                    .map(|&v| norm_axis(v, s.len()))
                    .collect::<Result<_, _>>()?;
                axes.sort_unstable();
                if s.len() != 4 || axes != [2, 3] {
                    return Err(format!(
                        "only the mean over H and W of a 4-D input is supported (axes {axes:?}, input {s:?})"
                    ));
                }
                if a.int("keepdims", 1)? != 0 {
                    self.emit_main(n, Op::GlobalAveragePool, vec![x])
                } else {
                    let base = n.output.first().cloned().unwrap_or_default();
                    let mid = self.fresh_tensor(&base);
                    self.emit(Op::GlobalAveragePool, vec![x], mid.clone())?;
                    self.emit_main(
                        n,
                        Op::Reshape {
                            shape: vec![s[0], s[1]],
                        },
                        vec![mid],
                    )
                }
            }
            "BatchNormalization" => {
                self.extra_outputs_unused(n, 1)?;
                if self.opset < 9 && a.int("spatial", 1)? == 0 {
                    return Err("attribute \"spatial\" = 0 is not supported".into());
                }
                if a.int("training_mode", 0)? != 0 {
                    return Err("attribute \"training_mode\" = 1 is not supported".into());
                }
                let (x, s) = self.act(n, ins, 0)?;
                let p: Vec<Vec<f32>> = (1..5)
                    .map(|i| self.konst(n, ins, i).map(|c| c.to_f32()))
                    .collect::<Result<_, _>>()?;
                if s.len() < 2 || p.iter().any(|v| v.len() != s[1]) {
                    return Err(format!(
                        "scale, bias, mean and var must have one value per channel of input {s:?} (got {:?})",
                        p.iter().map(|v| v.len()).collect::<Vec<_>>()
                    ));
                }
                let eps = a.float("epsilon", 1e-5)?;
                let mut p = p.into_iter();
                let mut next = || p.next().expect("4 parameters");
                let op = Op::BatchNorm {
                    gamma: next(),
                    beta: next(),
                    mean: next(),
                    var: next(),
                    eps,
                };
                self.emit_main(n, op, vec![x])
            }
            "Gemm" => {
                let (x, s) = self.act(n, ins, 0)?;
                if s.len() != 2 {
                    return Err(format!("input A must be 2-D, got {s:?}"));
                }
                if a.int("transA", 0)? != 0 {
                    return Err("attribute \"transA\" = 1 is not supported".into());
                }
                let b = self.konst(n, ins, 1)?;
                if b.shape.len() != 2 {
                    return Err(format!("input B must be 2-D, got {:?}", b.shape));
                }
                let alpha = a.float("alpha", 1.0)?;
                let beta = a.float("beta", 1.0)?;
                let bt = if a.int("transB", 0)? != 0 {
                    b.clone()
                } else {
                    tensor::transpose(b, &[1, 0])?
                };
                let (nn, k) = (bt.shape[0], bt.shape[1]);
                let w: Vec<f32> = bt.to_f32().iter().map(|v| v * alpha).collect();
                let bias = match self.opt_konst(n, ins, 2)? {
                    None => None,
                    Some(c) => {
                        let ok = c.len() == 1
                            || (c.len() == nn
                                && c.shape.last() == Some(&nn)
                                && c.shape.iter().rev().skip(1).all(|&d| d == 1));
                        if !ok || c.shape.len() > 2 {
                            return Err(format!(
                                "input C of shape {:?} must broadcast as a row of {nn} values",
                                c.shape
                            ));
                        }
                        let v = c.to_f32();
                        Some(
                            (0..nn)
                                .map(|j| beta * if v.len() == 1 { v[0] } else { v[j] })
                                .collect(),
                        )
                    }
                };
                let op = Op::Linear {
                    weight: Tensor::new(vec![nn, k], w),
                    bias,
                };
                self.emit_main(n, op, vec![x])
            }
            "MatMul" => {
                let (x, _) = self.act(n, ins, 0)?;
                let b = self.konst(n, ins, 1)?;
                if b.shape.len() != 2 {
                    return Err(format!(
                        "only a constant 2-D right operand is supported, got {:?}",
                        b.shape
                    ));
                }
                let bt = tensor::transpose(b, &[1, 0])?;
                let op = Op::Linear {
                    weight: Tensor::new(bt.shape.clone(), bt.to_f32()),
                    bias: None,
                };
                self.emit_main(n, op, vec![x])
            }
            "Add" | "Sub" | "Mul" | "Div" => self.arith(n, ins),
            "Concat" => {
                let mut xs = Vec::new();
                for i in 0..ins.len() {
                    xs.push(self.act(n, ins, i)?);
                }
                let r = xs.first().ok_or("Concat needs at least one input")?.1.len();
                let axis = norm_axis(
                    a.opt_int("axis")?.ok_or("attribute \"axis\" is required")?,
                    r,
                )
                .map_err(|m| format!("attribute \"axis\": {m}"))?;
                self.emit_main(
                    n,
                    Op::Concat { axis },
                    xs.into_iter().map(|x| x.0).collect(),
                )
            }
            "Softmax" => {
                let (x, s) = self.act(n, ins, 0)?;
                let r = s.len();
                if self.opset >= 13 {
                    let axis = norm_axis(a.int("axis", -1)?, r)
                        .map_err(|m| format!("attribute \"axis\": {m}"))?;
                    return self.emit_main(n, Op::Softmax { axis }, vec![x]);
                }
                let axis = norm_axis(a.int("axis", 1)?, r)
                    .map_err(|m| format!("attribute \"axis\": {m}"))?;
                if axis + 1 == r {
                    return self.emit_main(n, Op::Softmax { axis }, vec![x]);
                }
                // Coerce to 2-D: [prod(before axis), prod(from axis)].
                let flat = vec![s[..axis].iter().product(), s[axis..].iter().product()];
                let base = n.output.first().cloned().unwrap_or_default();
                let m1 = self.fresh_tensor(&base);
                let m2 = self.fresh_tensor(&base);
                self.emit(Op::Reshape { shape: flat }, vec![x], m1.clone())?;
                self.emit(Op::Softmax { axis: 1 }, vec![m1], m2.clone())?;
                self.emit_main(n, Op::Reshape { shape: s }, vec![m2])
            }
            "Flatten" => {
                let (x, s) = self.act(n, ins, 0)?;
                let to = flatten_shape(&s, a.int("axis", 1)?)?;
                self.reshape_to(n, x, &s, to)
            }
            "Reshape" => {
                let (x, s) = self.act(n, ins, 0)?;
                let spec = self.konst(n, ins, 1)?.to_i64();
                let to = reshape_target(&s, &spec, a.int("allowzero", 0)? != 0)?;
                self.reshape_to(n, x, &s, to)
            }
            "Squeeze" => {
                let (x, s) = self.act(n, ins, 0)?;
                let axes = self.axes(n, ins, 13)?;
                let to = squeeze_shape(&s, axes.as_deref())?;
                self.reshape_to(n, x, &s, to)
            }
            "Unsqueeze" => {
                let (x, s) = self.act(n, ins, 0)?;
                let axes = self.axes(n, ins, 13)?.ok_or("axes are required")?;
                let to = unsqueeze_shape(&s, &axes)?;
                self.reshape_to(n, x, &s, to)
            }
            "Transpose" => {
                let (x, s) = self.act(n, ins, 0)?;
                let r = s.len();
                let perm = a
                    .ints("perm")?
                    .unwrap_or_else(|| (0..r as i64).rev().collect());
                let mut seen = vec![false; r];
                if perm.len() != r
                    || perm.iter().any(|&p| {
                        p < 0 || p as usize >= r || std::mem::replace(&mut seen[p as usize], true)
                    })
                {
                    return Err(format!(
                        "attribute \"perm\" = {perm:?} is not a permutation of rank {r}"
                    ));
                }
                // Only a transpose that keeps the order of non-unit axes
                // (a reshape in disguise) is supported.
                let moved: Vec<i64> = perm
                    .iter()
                    .copied()
                    .filter(|&p| s[p as usize] != 1)
                    .collect();
                if moved.windows(2).any(|w| w[0] > w[1]) {
                    return Err(format!(
                        "Transpose with perm {perm:?} of an activation of shape {s:?} is not supported (it moves data)"
                    ));
                }
                let to = perm.iter().map(|&p| s[p as usize]).collect();
                self.reshape_to(n, x, &s, to)
            }
            "Cast" => {
                let (x, _) = self.act(n, ins, 0)?;
                let to = a.opt_int("to")?.ok_or("attribute \"to\" is required")?;
                if to != dt::FLOAT as i64 {
                    return Err(format!(
                        "attribute \"to\" = {to} ({}) is not supported for activations (only FLOAT)",
                        dt::name(to as i32)
                    ));
                }
                self.bind(n, Value::Act(x))
            }
            "Gather" | "Slice" | "ConstantOfShape" => Err(format!(
                "{op} is only supported on constants (shape computations), not on activations"
            )),
            _ => Err(unsupported_op_msg(n)),
        }
    }

    fn conv(&mut self, n: &NodeProto, a: &Attrs, ins: &Ins) -> Result<(), String> {
        let (x, s) = self.act(n, ins, 0)?;
        if s.len() != 4 {
            return Err(format!(
                "only 2-D convolution (4-D NCHW input) is supported, input shape {s:?}"
            ));
        }
        let w = self.konst(n, ins, 1)?;
        if w.shape.len() != 4 {
            return Err(format!("weight must be 4-D, got {:?}", w.shape));
        }
        let kernel = [w.shape[2], w.shape[3]];
        if let Some(k) = a.ints("kernel_shape")? {
            if k.len() != 2 || k[0] != kernel[0] as i64 || k[1] != kernel[1] as i64 {
                return Err(format!(
                    "attribute \"kernel_shape\" = {k:?} does not match the weight shape {:?}",
                    w.shape
                ));
            }
        }
        let group = a.int("group", 1)?;
        if group < 1 || group > s[1] as i64 {
            return Err(format!(
                "attribute \"group\" = {group} is not supported for {} input channels",
                s[1]
            ));
        }
        let strides = two(&a.dims("strides", 2, 1, 1)?);
        let dilations = two(&a.dims("dilations", 2, 1, 1)?);
        let pads = resolve_pads(a, [s[2], s[3]], kernel, strides, dilations)?;
        let bias = self.opt_konst(n, ins, 2)?.map(|c| c.to_f32());
        let op = Op::Conv {
            weight: Tensor::new(w.shape.clone(), w.to_f32()),
            bias,
            window: Window {
                kernel,
                strides,
                pads,
                dilations,
            },
            groups: group as usize,
        };
        self.emit_main(n, op, vec![x])
    }

    fn pool(&mut self, n: &NodeProto, a: &Attrs, ins: &Ins) -> Result<(), String> {
        let max = n.op_type == "MaxPool";
        if max {
            self.extra_outputs_unused(n, 1)?;
        }
        let (x, s) = self.act(n, ins, 0)?;
        if s.len() != 4 {
            return Err(format!(
                "only 2-D pooling (4-D NCHW input) is supported, input shape {s:?}"
            ));
        }
        if a.get("kernel_shape").is_none() {
            return Err("attribute \"kernel_shape\" is required".into());
        }
        let kernel = two(&a.dims("kernel_shape", 2, 1, 1)?);
        let strides = two(&a.dims("strides", 2, 1, 1)?);
        let dilations = two(&a.dims("dilations", 2, 1, 1)?);
        let pads = resolve_pads(a, [s[2], s[3]], kernel, strides, dilations)?;
        let ceil_mode = match a.int("ceil_mode", 0)? {
            0 => false,
            1 => true,
            v => return Err(format!("attribute \"ceil_mode\" = {v} is not supported")),
        };
        let window = Window {
            kernel,
            strides,
            pads,
            dilations,
        };
        // storage_order only affects the (unused) indices output.
        let op = if max {
            Op::MaxPool { window, ceil_mode }
        } else {
            Op::AveragePool {
                window,
                ceil_mode,
                count_include_pad: a.int("count_include_pad", 0)? != 0,
            }
        };
        self.emit_main(n, op, vec![x])
    }

    /// Add/Sub/Mul/Div with at least one activation operand.
    fn arith(&mut self, n: &NodeProto, ins: &Ins) -> Result<(), String> {
        let op = n.op_type.as_str();
        let is_act = |i: usize| matches!(ins.get(i), Some(Some(Value::Act(_))));
        if ins.len() != 2 {
            return Err(format!("expected 2 inputs, got {}", ins.len()));
        }
        if is_act(0) && is_act(1) {
            let (x, sx) = self.act(n, ins, 0)?;
            let (y, sy) = self.act(n, ins, 1)?;
            if op != "Add" {
                return Err(format!("{op} of two activations is not supported"));
            }
            if sx != sy {
                return Err(format!(
                    "Add of activations with different shapes {sx:?} and {sy:?} is not supported"
                ));
            }
            return self.emit_main(n, Op::Add, vec![x, y]);
        }
        let act_first = is_act(0);
        let (x, s) = self.act(n, ins, if act_first { 0 } else { 1 })?;
        let c = self.konst(n, ins, if act_first { 1 } else { 0 })?;
        let v = per_channel(&s, c)?;
        let ones = vec![1.0; v.len()];
        let zeros = vec![0.0; v.len()];
        let (scale, bias) = match (op, act_first) {
            ("Add", _) => (ones, v),
            ("Mul", _) => (v, zeros),
            ("Sub", true) => (ones, v.iter().map(|b| -b).collect()),
            ("Sub", false) => (vec![-1.0; v.len()], v),
            ("Div", true) => (v.iter().map(|d| 1.0 / d).collect(), zeros),
            _ => return Err("division of a constant by an activation is not supported".into()),
        };
        self.emit_main(n, Op::ChannelAffine { scale, bias }, vec![x])
    }
}

/// Gives graph outputs their ONNX names where Identity/Dropout removal left
/// an internal name.
fn rename_outputs(g: &mut Graph, onnx: &[String]) {
    for (i, want) in onnx.iter().enumerate() {
        let have = g.outputs[i].clone();
        if &have == want
            || g.inputs.iter().any(|(n, _)| n == &have)
            || g.shapes.contains_key(want)
            || g.outputs.iter().filter(|o| **o == have).count() > 1
            || onnx.contains(&have)
        {
            continue;
        }
        for node in &mut g.nodes {
            if node.output == have {
                node.output = want.clone();
            }
            for x in &mut node.inputs {
                if *x == have {
                    *x = want.clone();
                }
            }
        }
        if let Some(s) = g.shapes.remove(&have) {
            g.shapes.insert(want.clone(), s);
        }
        g.outputs[i] = want.clone();
    }
}

/// Composes a ChannelAffine into its producer when the producer's output has
/// no other use: ChannelAffine into ChannelAffine, and a pure bias add
/// (scale 1) into the bias of Linear (MatMul + Add) or Conv.
fn fuse(g: &mut Graph) {
    let mut i = 0;
    while i < g.nodes.len() {
        let (scale, bias, input) = match &g.nodes[i].op {
            Op::ChannelAffine { scale, bias } => {
                (scale.clone(), bias.clone(), g.nodes[i].inputs[0].clone())
            }
            _ => {
                i += 1;
                continue;
            }
        };
        let uses = g
            .nodes
            .iter()
            .flat_map(|n| &n.inputs)
            .filter(|x| **x == input)
            .count();
        let p = g.nodes[..i].iter().position(|n| n.output == input);
        let (Some(p), 1, false) = (p, uses, g.outputs.contains(&input)) else {
            i += 1;
            continue;
        };
        let shape = g.shapes.get(&input).cloned().unwrap_or_default();
        let c = if shape.len() >= 2 { shape[1] } else { 1 };
        let at = |v: &[f32], k: usize| if v.len() == 1 { v[0] } else { v[k] };
        let pure_add = scale.iter().all(|&s| s == 1.0);
        let fused = match &mut g.nodes[p].op {
            Op::ChannelAffine {
                scale: s1,
                bias: b1,
            } => {
                let len = s1.len().max(b1.len()).max(scale.len()).max(bias.len());
                let len = if len > 1 { c } else { 1 };
                let ns: Vec<f32> = (0..len).map(|k| at(s1, k) * at(&scale, k)).collect();
                let nb: Vec<f32> = (0..len)
                    .map(|k| at(b1, k) * at(&scale, k) + at(&bias, k))
                    .collect();
                *s1 = ns;
                *b1 = nb;
                true
            }
            Op::Linear { weight, bias: lb } if pure_add && shape.len() == 2 => {
                let nout = weight.shape[0];
                let old = lb.take().unwrap_or_else(|| vec![0.0; nout]);
                *lb = Some((0..nout).map(|k| old[k] + at(&bias, k)).collect());
                true
            }
            Op::Conv {
                weight, bias: cb, ..
            } if pure_add => {
                let nout = weight.shape[0];
                let old = cb.take().unwrap_or_else(|| vec![0.0; nout]);
                *cb = Some((0..nout).map(|k| old[k] + at(&bias, k)).collect());
                true
            }
            _ => false,
        };
        if !fused {
            i += 1;
            continue;
        }
        let removed = g.nodes.remove(i);
        g.shapes.remove(&input);
        g.nodes[p].output = removed.output;
    }
}

/// Drops nodes whose outputs reach no graph output.
fn prune(g: &mut Graph) {
    let mut live: HashSet<String> = g.outputs.iter().cloned().collect();
    let mut keep = vec![false; g.nodes.len()];
    for (k, n) in g.nodes.iter().enumerate().rev() {
        if live.contains(&n.output) {
            keep[k] = true;
            live.extend(n.inputs.iter().cloned());
        }
    }
    let mut it = keep.iter();
    g.nodes.retain(|_| *it.next().expect("same length"));
    let inputs: HashSet<&String> = g.inputs.iter().map(|(n, _)| n).collect();
    let produced: HashSet<&String> = g.nodes.iter().map(|n| &n.output).collect();
    g.shapes
        .retain(|k, _| inputs.contains(k) || produced.contains(k));
}
