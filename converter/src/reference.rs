//! Float reference executor over [`crate::ir::Graph`]: plain f32 Rust, NCHW,
//! written to be obviously correct rather than fast. It is the `--reference`
//! model of `shiftnn eval` and the source of per-layer activations for
//! `shiftnn diff`.
//!
//! Every operator also has a static shape rule ([`output_shape`]), shared
//! with the ONNX importer so that import-time shape inference and execution
//! agree by construction.

use std::collections::BTreeMap;

use crate::ir::{Graph, Op, Window};

/// Errors of the reference executor.
#[derive(Debug, thiserror::Error)]
pub enum RefError {
    /// A graph input was not supplied.
    #[error("graph input \"{0}\" was not supplied")]
    MissingInput(String),
    /// A supplied input does not match the graph's input shape.
    #[error("input \"{name}\" has {got} values, the graph expects {expected} (shape {shape:?})")]
    InputSize {
        name: String,
        expected: usize,
        got: usize,
        shape: Vec<usize>,
    },
    /// A name was supplied that is not a graph input.
    #[error("\"{0}\" is not a graph input")]
    UnknownInput(String),
    /// A node reads an activation nothing has produced (graph not
    /// topologically sorted or malformed).
    #[error("node \"{node}\": activation \"{name}\" is not available")]
    Unavailable { node: String, name: String },
    /// Shapes do not fit the operator.
    #[error("node \"{node}\" ({op}): {msg}")]
    Shape {
        node: String,
        op: &'static str,
        msg: String,
    },
    /// A graph output was never produced.
    #[error("graph output \"{0}\" is not produced")]
    MissingOutput(String),
}

/// Output extent of one window dimension (Conv with `ceil == false`, pools).
/// Follows ONNX/PyTorch: with `ceil`, a last window that would start in the
/// end padding is dropped.
pub fn window_out(
    input: usize,
    kernel: usize,
    stride: usize,
    dilation: usize,
    pad_begin: usize,
    pad_end: usize,
    ceil: bool,
) -> Result<usize, String> {
    if kernel == 0 || stride == 0 || dilation == 0 {
        return Err(format!(
            "kernel {kernel}, stride {stride} and dilation {dilation} must all be >= 1"
        ));
    }
    let eff = (kernel - 1)
        .checked_mul(dilation)
        .and_then(|e| e.checked_add(1))
        .ok_or("dilated kernel is too large")?;
    let padded = input
        .checked_add(pad_begin)
        .and_then(|p| p.checked_add(pad_end))
        .ok_or("padding is too large")?;
    if eff > padded {
        return Err(format!(
            "kernel extent {eff} is larger than the padded input {padded} (input {input}, pads {pad_begin}+{pad_end})"
        ));
    }
    let num = padded - eff;
    let mut out = if ceil {
        num.div_ceil(stride) + 1
    } else {
        num / stride + 1
    };
    if ceil && (out - 1) * stride >= input + pad_begin {
        out -= 1;
    }
    Ok(out)
}

fn check_window(w: &Window, x: &[usize], pool: bool, ceil: bool) -> Result<[usize; 2], String> {
    if x.len() != 4 || x[2] == 0 || x[3] == 0 {
        return Err(format!(
            "expected a 4-D NCHW input with non-empty H and W, got shape {x:?}"
        ));
    }
    let mut out = [0; 2];
    for a in 0..2 {
        if pool {
            let eff = (w.kernel[a].max(1) - 1)
                .saturating_mul(w.dilations[a])
                .saturating_add(1);
            if w.pads[a] >= eff || w.pads[a + 2] >= eff {
                return Err(format!(
                    "pads {:?} must be smaller than the kernel {:?}",
                    w.pads, w.kernel
                ));
            }
        }
        out[a] = window_out(
            x[2 + a],
            w.kernel[a],
            w.strides[a],
            w.dilations[a],
            w.pads[a],
            w.pads[a + 2],
            ceil,
        )?;
    }
    Ok(out)
}

fn channels(x: &[usize]) -> usize {
    if x.len() >= 2 {
        x[1]
    } else {
        1
    }
}

/// Static output shape of `op` applied to inputs of the given shapes, or why
/// the shapes do not fit the operator.
pub fn output_shape(op: &Op, inputs: &[&[usize]]) -> Result<Vec<usize>, String> {
    let want = match op {
        Op::Add => 2,
        Op::Concat { .. } => inputs.len().max(1),
        _ => 1,
    };
    if inputs.len() != want {
        return Err(format!("expected {want} input(s), got {}", inputs.len()));
    }
    let x = inputs[0];
    let same = || Ok(x.to_vec());
    match op {
        Op::Conv {
            weight,
            bias,
            window,
            groups,
        } => {
            let ws = &weight.shape;
            if ws.iter().product::<usize>() != weight.data.len() {
                return Err(format!("weight data does not fill its shape {ws:?}"));
            }
            if ws.len() != 4 {
                return Err(format!("weight must be 4-D, got {ws:?}"));
            }
            if x.len() != 4 {
                return Err(format!("expected a 4-D NCHW input, got shape {x:?}"));
            }
            let g = *groups;
            if g == 0 || !x[1].is_multiple_of(g) || ws[0] % g != 0 {
                return Err(format!(
                    "group {g} must divide input channels {} and output channels {}",
                    x[1], ws[0]
                ));
            }
            if x[1] / g != ws[1] {
                return Err(format!(
                    "input has {} channels but weight {ws:?} with group {g} expects {}",
                    x[1],
                    ws[1] * g
                ));
            }
            if window.kernel != [ws[2], ws[3]] {
                return Err(format!(
                    "kernel {:?} disagrees with weight {ws:?}",
                    window.kernel
                ));
            }
            if let Some(b) = bias {
                if b.len() != ws[0] {
                    return Err(format!(
                        "bias has {} values for {} output channels",
                        b.len(),
                        ws[0]
                    ));
                }
            }
            let o = check_window(window, x, false, false)?;
            Ok(vec![x[0], ws[0], o[0], o[1]])
        }
        Op::Linear { weight, bias } => {
            let ws = &weight.shape;
            if ws.iter().product::<usize>() != weight.data.len() {
                return Err(format!("weight data does not fill its shape {ws:?}"));
            }
            if ws.len() != 2 {
                return Err(format!("weight must be 2-D, got {ws:?}"));
            }
            if x.last() != Some(&ws[1]) {
                return Err(format!(
                    "input {x:?} does not end in k = {} of weight {ws:?}",
                    ws[1]
                ));
            }
            if let Some(b) = bias {
                if b.len() != ws[0] {
                    return Err(format!("bias has {} values for {} outputs", b.len(), ws[0]));
                }
            }
            let mut s = x.to_vec();
            *s.last_mut().expect("non-empty") = ws[0];
            Ok(s)
        }
        Op::BatchNorm {
            gamma,
            beta,
            mean,
            var,
            ..
        } => {
            let c = channels(x);
            if x.len() < 2 || [gamma, beta, mean, var].iter().any(|v| v.len() != c) {
                return Err(format!(
                    "parameters must have one value per channel of {x:?}"
                ));
            }
            same()
        }
        Op::ChannelAffine { scale, bias } => {
            let c = channels(x);
            if x.is_empty() || ![1, c].contains(&scale.len()) || ![1, c].contains(&bias.len()) {
                return Err(format!(
                    "scale ({}) and bias ({}) must have 1 or {c} values for input {x:?}",
                    scale.len(),
                    bias.len()
                ));
            }
            same()
        }
        Op::Relu
        | Op::Clip { .. }
        | Op::LeakyRelu { .. }
        | Op::Sigmoid
        | Op::HardSigmoid { .. }
        | Op::HardSwish => same(),
        Op::Add => {
            if inputs[0] != inputs[1] {
                return Err(format!(
                    "operand shapes {:?} and {:?} differ",
                    inputs[0], inputs[1]
                ));
            }
            same()
        }
        Op::MaxPool { window, ceil_mode }
        | Op::AveragePool {
            window, ceil_mode, ..
        } => {
            let o = check_window(window, x, true, *ceil_mode)?;
            Ok(vec![x[0], x[1], o[0], o[1]])
        }
        Op::GlobalAveragePool => {
            if x.len() < 3 || x[2..].contains(&0) {
                return Err(format!("expected an N,C,spatial... input, got {x:?}"));
            }
            let mut s = x.to_vec();
            s[2..].iter_mut().for_each(|d| *d = 1);
            Ok(s)
        }
        Op::Reshape { shape } => {
            let a: Option<usize> = x.iter().try_fold(1usize, |p, &d| p.checked_mul(d));
            let b: Option<usize> = shape.iter().try_fold(1usize, |p, &d| p.checked_mul(d));
            if a.is_none() || a != b {
                return Err(format!("cannot reshape {x:?} to {shape:?}"));
            }
            Ok(shape.clone())
        }
        Op::Concat { axis } => {
            if *axis >= x.len() {
                return Err(format!("axis {axis} out of range for {x:?}"));
            }
            let mut s = x.to_vec();
            for y in &inputs[1..] {
                if y.len() != x.len() || (0..x.len()).any(|k| k != *axis && y[k] != x[k]) {
                    return Err(format!(
                        "inputs {x:?} and {y:?} cannot be concatenated on axis {axis}"
                    ));
                }
                s[*axis] = s[*axis].checked_add(y[*axis]).ok_or("concat too large")?;
            }
            Ok(s)
        }
        Op::Softmax { axis } => {
            if *axis >= x.len() {
                return Err(format!("axis {axis} out of range for {x:?}"));
            }
            same()
        }
    }
}

/// Runs the graph and returns its outputs, in `graph.outputs` order.
pub fn run(graph: &Graph, inputs: &[(&str, &[f32])]) -> Result<Vec<Vec<f32>>, RefError> {
    let all = execute(graph, inputs, false)?;
    graph
        .outputs
        .iter()
        .map(|o| {
            all.get(o)
                .cloned()
                .ok_or_else(|| RefError::MissingOutput(o.clone()))
        })
        .collect()
}

/// Runs the graph and returns every activation (graph inputs included) by
/// name.
pub fn run_all(
    graph: &Graph,
    inputs: &[(&str, &[f32])],
) -> Result<BTreeMap<String, Vec<f32>>, RefError> {
    execute(graph, inputs, true)
}

fn execute(
    graph: &Graph,
    inputs: &[(&str, &[f32])],
    keep_all: bool,
) -> Result<BTreeMap<String, Vec<f32>>, RefError> {
    let mut vals: BTreeMap<String, Vec<f32>> = BTreeMap::new();
    let mut shapes: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (name, _) in inputs {
        if !graph.inputs.iter().any(|(n, _)| n == name) {
            return Err(RefError::UnknownInput(name.to_string()));
        }
    }
    for (name, shape) in &graph.inputs {
        let data = inputs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, d)| *d)
            .ok_or_else(|| RefError::MissingInput(name.clone()))?;
        let expected: usize = shape.iter().product();
        if data.len() != expected {
            return Err(RefError::InputSize {
                name: name.clone(),
                expected,
                got: data.len(),
                shape: shape.clone(),
            });
        }
        vals.insert(name.clone(), data.to_vec());
        shapes.insert(name, shape.clone());
    }
    // Last use of each activation, to free memory when not keeping all.
    let mut last_use: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, n) in graph.nodes.iter().enumerate() {
        for x in &n.inputs {
            last_use.insert(x, i);
        }
    }
    for (i, node) in graph.nodes.iter().enumerate() {
        let mut xs: Vec<&[f32]> = Vec::with_capacity(node.inputs.len());
        let mut ss: Vec<&[usize]> = Vec::with_capacity(node.inputs.len());
        for x in &node.inputs {
            let (Some(v), Some(s)) = (vals.get(x), shapes.get(x.as_str())) else {
                return Err(RefError::Unavailable {
                    node: node.name.clone(),
                    name: x.clone(),
                });
            };
            xs.push(v);
            ss.push(s);
        }
        let shape_err = |msg: String| RefError::Shape {
            node: node.name.clone(),
            op: node.op.name(),
            msg,
        };
        let out_shape = output_shape(&node.op, &ss).map_err(shape_err)?;
        let out = eval(&node.op, &xs, &ss, &out_shape);
        debug_assert_eq!(out.len(), out_shape.iter().product::<usize>());
        vals.insert(node.output.clone(), out);
        shapes.insert(&node.output, out_shape);
        if !keep_all {
            for x in &node.inputs {
                if last_use.get(x.as_str()) == Some(&i) && !graph.outputs.contains(x) {
                    vals.remove(x);
                }
            }
        }
    }
    Ok(vals)
}

/// Evaluates one operator; shapes were checked by [`output_shape`].
fn eval(op: &Op, xs: &[&[f32]], ss: &[&[usize]], out_shape: &[usize]) -> Vec<f32> {
    let x = xs[0];
    let s = ss[0];
    let map = |f: &dyn Fn(f32) -> f32| x.iter().map(|&v| f(v)).collect::<Vec<f32>>();
    // Per-channel helper: (outer n, channels c, inner size).
    let nci = || {
        let c = channels(s);
        let n = s.first().copied().unwrap_or(1);
        let inner = if s.len() > 2 {
            s[2..].iter().product()
        } else {
            1
        };
        (if s.len() >= 2 { n } else { 1 }, c, inner)
    };
    match op {
        Op::Conv {
            weight,
            bias,
            window,
            groups,
        } => conv(x, s, weight, bias.as_deref(), window, *groups, out_shape),
        Op::Linear { weight, bias } => {
            let (n, k) = (weight.shape[0], weight.shape[1]);
            let m: usize = s[..s.len() - 1].iter().product();
            let mut out = vec![0f32; m * n];
            for r in 0..m {
                let row = &x[r * k..(r + 1) * k];
                for j in 0..n {
                    let w = &weight.data[j * k..(j + 1) * k];
                    let mut acc = 0f32;
                    for t in 0..k {
                        acc += row[t] * w[t];
                    }
                    out[r * n + j] = acc + bias.as_ref().map_or(0.0, |b| b[j]);
                }
            }
            out
        }
        Op::BatchNorm {
            gamma,
            beta,
            mean,
            var,
            eps,
        } => {
            let (n, c, inner) = nci();
            let mut out = x.to_vec();
            for b in 0..n {
                for ch in 0..c {
                    let scale = gamma[ch] / (var[ch] + eps).sqrt();
                    let shift = beta[ch] - mean[ch] * scale;
                    let base = (b * c + ch) * inner;
                    for v in &mut out[base..base + inner] {
                        *v = *v * scale + shift;
                    }
                }
            }
            out
        }
        Op::ChannelAffine { scale, bias } => {
            let (n, c, inner) = nci();
            let mut out = x.to_vec();
            for b in 0..n {
                for ch in 0..c {
                    let sc = if scale.len() == 1 {
                        scale[0]
                    } else {
                        scale[ch]
                    };
                    let bi = if bias.len() == 1 { bias[0] } else { bias[ch] };
                    let base = (b * c + ch) * inner;
                    for v in &mut out[base..base + inner] {
                        *v = *v * sc + bi;
                    }
                }
            }
            out
        }
        Op::Relu => map(&|v| if v > 0.0 { v } else { 0.0 }),
        Op::Clip { min, max } => map(&|v| v.max(*min).min(*max)),
        Op::LeakyRelu { alpha } => map(&|v| if v >= 0.0 { v } else { alpha * v }),
        Op::Sigmoid => map(&|v| 1.0 / (1.0 + (-v).exp())),
        Op::HardSigmoid { alpha, beta } => map(&|v| (alpha * v + beta).clamp(0.0, 1.0)),
        Op::HardSwish => map(&|v| v * (v / 6.0 + 0.5).clamp(0.0, 1.0)),
        Op::Add => x.iter().zip(xs[1]).map(|(a, b)| a + b).collect(),
        Op::MaxPool { window, .. } => pool(x, s, window, out_shape, None),
        Op::AveragePool {
            window,
            count_include_pad,
            ..
        } => pool(x, s, window, out_shape, Some(*count_include_pad)),
        Op::GlobalAveragePool => {
            let (n, c, inner) = nci();
            let mut out = Vec::with_capacity(n * c);
            for b in 0..n {
                for ch in 0..c {
                    let base = (b * c + ch) * inner;
                    let sum: f32 = x[base..base + inner].iter().sum();
                    out.push(sum / inner as f32);
                }
            }
            out
        }
        Op::Reshape { .. } => x.to_vec(),
        Op::Concat { axis } => {
            let outer: usize = out_shape[..*axis].iter().product();
            let mut out = Vec::with_capacity(out_shape.iter().product());
            for o in 0..outer {
                for (v, sh) in xs.iter().zip(ss) {
                    let chunk: usize = sh[*axis..].iter().product();
                    out.extend_from_slice(&v[o * chunk..(o + 1) * chunk]);
                }
            }
            out
        }
        Op::Softmax { axis } => {
            let outer: usize = s[..*axis].iter().product();
            let len = s[*axis];
            let inner: usize = s[*axis + 1..].iter().product();
            let mut out = x.to_vec();
            for o in 0..outer {
                for i in 0..inner {
                    let at = |k: usize| (o * len + k) * inner + i;
                    let m = (0..len).map(|k| x[at(k)]).fold(f32::NEG_INFINITY, f32::max);
                    let mut sum = 0f32;
                    for k in 0..len {
                        let e = (x[at(k)] - m).exp();
                        out[at(k)] = e;
                        sum += e;
                    }
                    for k in 0..len {
                        out[at(k)] /= sum;
                    }
                }
            }
            out
        }
    }
}

/// Output positions `lo..hi` (of `out`) whose input coordinate
/// `o * stride + off - pad` lies inside `0..n`.
fn valid_range(out: usize, n: usize, stride: usize, off: usize, pad: usize) -> (usize, usize) {
    let lo = if off >= pad {
        0
    } else {
        (pad - off).div_ceil(stride)
    };
    let hi = if n + pad <= off {
        0
    } else {
        (n + pad - off - 1) / stride + 1
    };
    let hi = hi.min(out);
    (lo.min(hi), hi)
}

fn conv(
    x: &[f32],
    s: &[usize],
    weight: &crate::ir::Tensor,
    bias: Option<&[f32]>,
    w: &Window,
    groups: usize,
    out_shape: &[usize],
) -> Vec<f32> {
    let (n, cin, h, wd) = (s[0], s[1], s[2], s[3]);
    let (cout, oh, ow) = (out_shape[1], out_shape[2], out_shape[3]);
    let (kh, kw) = (w.kernel[0], w.kernel[1]);
    let ([sy, sx], [dy, dx]) = (w.strides, w.dilations);
    let (pt, pl) = (w.pads[0], w.pads[1]);
    let cin_g = cin / groups;
    let cout_g = cout / groups;
    let yr: Vec<(usize, usize)> = (0..kh)
        .map(|ky| valid_range(oh, h, sy, ky * dy, pt))
        .collect();
    let xr: Vec<(usize, usize)> = (0..kw)
        .map(|kx| valid_range(ow, wd, sx, kx * dx, pl))
        .collect();
    let mut out = vec![0f32; n * cout * oh * ow];
    for b in 0..n {
        for oc in 0..cout {
            let g = oc / cout_g;
            let plane = &mut out[(b * cout + oc) * oh * ow..(b * cout + oc + 1) * oh * ow];
            plane.fill(bias.map_or(0.0, |bv| bv[oc]));
            for icg in 0..cin_g {
                let ic = g * cin_g + icg;
                let xin = &x[(b * cin + ic) * h * wd..(b * cin + ic + 1) * h * wd];
                let wk =
                    &weight.data[(oc * cin_g + icg) * kh * kw..(oc * cin_g + icg + 1) * kh * kw];
                for (ky, &(y0, y1)) in yr.iter().enumerate() {
                    for (kx, &(x0, x1)) in xr.iter().enumerate() {
                        if x0 >= x1 {
                            continue;
                        }
                        let wv = wk[ky * kw + kx];
                        for y in y0..y1 {
                            // In range by construction of `yr` and `xr`.
                            let iy = y * sy + ky * dy - pt;
                            let row = &xin[iy * wd..(iy + 1) * wd];
                            let orow = &mut plane[y * ow + x0..y * ow + x1];
                            let ix0 = x0 * sx + kx * dx - pl;
                            if sx == 1 {
                                for (o, &v) in orow.iter_mut().zip(&row[ix0..ix0 + (x1 - x0)]) {
                                    *o += v * wv;
                                }
                            } else {
                                for (k, o) in orow.iter_mut().enumerate() {
                                    *o += row[ix0 + k * sx] * wv;
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    out
}

/// Max pooling (`avg == None`) or average pooling (`Some(count_include_pad)`).
fn pool(x: &[f32], s: &[usize], w: &Window, out_shape: &[usize], avg: Option<bool>) -> Vec<f32> {
    let (n, c, h, wd) = (s[0], s[1], s[2], s[3]);
    let (oh, ow) = (out_shape[2], out_shape[3]);
    let mut out = Vec::with_capacity(n * c * oh * ow);
    // Bounds of the padded input, as signed coordinates.
    let (top, left) = (-(w.pads[0] as isize), -(w.pads[1] as isize));
    let (bottom, right) = ((h + w.pads[2]) as isize, (wd + w.pads[3]) as isize);
    for plane in x.chunks_exact(h * wd).take(n * c) {
        for y in 0..oh {
            for xo in 0..ow {
                let mut max = f32::NEG_INFINITY;
                let mut sum = 0f32;
                let (mut valid, mut padded) = (0usize, 0usize);
                for ky in 0..w.kernel[0] {
                    let iy = (y * w.strides[0] + ky * w.dilations[0]) as isize + top;
                    for kx in 0..w.kernel[1] {
                        let ix = (xo * w.strides[1] + kx * w.dilations[1]) as isize + left;
                        if iy < bottom && ix < right {
                            padded += 1;
                        }
                        if iy >= 0 && iy < h as isize && ix >= 0 && ix < wd as isize {
                            let v = plane[iy as usize * wd + ix as usize];
                            max = max.max(v);
                            sum += v;
                            valid += 1;
                        }
                    }
                }
                out.push(match avg {
                    None => max,
                    Some(include_pad) => {
                        let d = if include_pad { padded } else { valid };
                        if d == 0 {
                            0.0
                        } else {
                            sum / d as f32
                        }
                    }
                });
            }
        }
    }
    out
}
