//! Float emulation of a `.shift` network (the *student*), with a
//! hand-written backward pass for the normalization parameters.
//!
//! The student walks the model's [`Graph`] and evaluates it in f32 with the
//! exact weights the device uses: a shift code `±2^p` times its channel
//! scale, an int8 weight times its channel scale, or an f32 weight times
//! its channel scale. Every normalization layer (a `Conv`/`Linear` `norm`
//! or a standalone `Norm`) is evaluated unfolded as
//! `y = gamma * (z - mean) / sqrt(var + eps) + beta`, the same formula the
//! runtime folds into its epilogues (`runtime/src/derive.rs`), so that
//! gamma and beta are parameters.
//!
//! # Int8 models
//!
//! In an int8-mode model, `Quantize` and `Dequantize` are identities and the
//! integer requantization is not reproduced. With
//! [`Student::set_fake_quant`] (on by default for int8 models) every value
//! the device holds in int8 is rounded to its scale and saturated to
//! `[-128, 127]` steps in the forward pass; the backward pass treats the
//! rounding as identity (straight-through) and passes no gradient through
//! saturated elements (an element is taken as saturated when it sits
//! exactly on the bound). Finite-difference checks need the rounding off.
//!
//! # Batching
//!
//! [`Student::forward`] evaluates node by node over a whole batch (samples
//! in parallel with rayon), which also lets [`Student::estimate_stats`]
//! re-estimate each layer's mean and variance from the batch before the
//! layers after it are evaluated.

use anyhow::{anyhow, bail, ensure, Context, Result};
use rayon::prelude::*;
use shiftnn_runtime::graph::{Act, DType, Graph, Mode, Op, WeightKind};
use shiftnn_runtime::Model;

/// One normalization layer's parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct NormLayer {
    /// Tensor prefix (as in the model's `NormRef`).
    pub prefix: String,
    /// Variance epsilon.
    pub eps: f32,
    /// Scale.
    pub gamma: Vec<f32>,
    /// Shift.
    pub beta: Vec<f32>,
    /// Running mean.
    pub mean: Vec<f32>,
    /// Running variance.
    pub var: Vec<f32>,
}

impl NormLayer {
    fn channels(&self) -> usize {
        self.gamma.len()
    }

    /// Gamma and beta that give, with `src`'s statistics, the function this
    /// layer computes with its own:
    ///
    /// ```text
    /// gamma' = gamma * s_src / s,  beta' = beta + gamma * (mean_src - mean) / s
    /// ```
    ///
    /// with `s = sqrt(var + eps)`. A device holding the file's statistics
    /// needs only these two vectors, so a patch carrying re-estimated
    /// statistics costs no more than the affine bytes.
    pub fn folded(&self, src: &NormLayer) -> (Vec<f32>, Vec<f32>) {
        let mut g = Vec::with_capacity(self.gamma.len());
        let mut b = Vec::with_capacity(self.gamma.len());
        for c in 0..self.gamma.len() {
            let s = (self.var[c] + self.eps).sqrt();
            let s0 = (src.var[c] + src.eps).sqrt();
            g.push(self.gamma[c] * s0 / s);
            b.push(self.beta[c] + self.gamma[c] * (src.mean[c] - self.mean[c]) / s);
        }
        (g, b)
    }
}

/// Gradients of a loss wrt every layer's gamma and beta, in the order of
/// [`Student::norms`].
#[derive(Clone, Debug, PartialEq)]
pub struct NormGrads {
    /// d loss / d gamma, per layer.
    pub gamma: Vec<Vec<f32>>,
    /// d loss / d beta, per layer.
    pub beta: Vec<Vec<f32>>,
}

impl NormGrads {
    fn zeros(norms: &[NormLayer]) -> NormGrads {
        NormGrads {
            gamma: norms.iter().map(|n| vec![0.0; n.channels()]).collect(),
            beta: norms.iter().map(|n| vec![0.0; n.channels()]).collect(),
        }
    }

    fn add(mut self, o: NormGrads) -> NormGrads {
        for (a, b) in self.gamma.iter_mut().zip(o.gamma) {
            a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
        }
        for (a, b) in self.beta.iter_mut().zip(o.beta) {
            a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
        }
        self
    }
}

/// Where a node's channel index lives in its output.
#[derive(Clone, Copy, Debug)]
struct Chan {
    /// Channels.
    c: usize,
    /// Elements per channel step (1 for a last-axis channel).
    inner: usize,
}

impl Chan {
    #[inline]
    fn of(&self, i: usize) -> usize {
        (i / self.inner) % self.c
    }
}

/// The affine-plus-activation tail shared by conv, linear and norm.
#[derive(Clone, Debug)]
struct Epilogue {
    norm: Option<usize>,
    act: Act,
    chan: Chan,
}

#[derive(Clone, Debug)]
enum Kind {
    /// Quantize, Dequantize, Reshape: same elements.
    Identity,
    Conv {
        groups: usize,
        c_out: usize,
        c_in_g: usize,
        in_plane: usize,
        /// Output positions per channel.
        p: usize,
        /// Taps per output channel (`c_in_g * kh * kw`).
        k: usize,
        /// For group 0, tap `t` at output position `q`: the input index
        /// (relative to the group's first channel) or -1 for padding.
        col: Vec<i32>,
        w: Vec<f32>,
        bias: Option<Vec<f32>>,
        epi: Epilogue,
    },
    Linear {
        m: usize,
        k: usize,
        n: usize,
        w: Vec<f32>,
        bias: Option<Vec<f32>>,
        epi: Epilogue,
    },
    Norm {
        epi: Epilogue,
    },
    Act(Act),
    Add(Act),
    /// Max or average pooling over per-position windows.
    Pool {
        max: bool,
        c: usize,
        in_plane: usize,
        /// Per output position (within a plane): window input offsets.
        windows: Vec<Vec<u32>>,
        /// Per output position: the divisor (average pooling).
        div: Vec<f32>,
    },
    Concat {
        outer: usize,
        /// Elements per outer step of each input.
        chunks: Vec<usize>,
    },
    Softmax {
        outer: usize,
        n: usize,
        inner: usize,
    },
}

#[derive(Clone, Debug)]
struct SNode {
    inputs: Vec<usize>,
    output: usize,
    kind: Kind,
}

/// Activations of one sample.
#[derive(Clone, Debug, Default)]
struct Tape {
    vals: Vec<Vec<f32>>,
    /// Per node: the pre-epilogue value `z` (conv, linear, norm, act, add).
    pre: Vec<Vec<f32>>,
    /// Per node: max-pool argmax (input index per output element).
    arg: Vec<Vec<u32>>,
}

/// A batch's forward pass, kept for [`Student::backward`].
#[derive(Clone, Debug)]
pub struct Forward {
    tapes: Vec<Tape>,
    logits_value: usize,
}

impl Forward {
    /// Number of samples.
    pub fn len(&self) -> usize {
        self.tapes.len()
    }

    /// True for an empty batch.
    pub fn is_empty(&self) -> bool {
        self.tapes.is_empty()
    }

    /// Logits of sample `i`.
    pub fn logits(&self, i: usize) -> &[f32] {
        &self.tapes[i].vals[self.logits_value]
    }
}

/// The device's network in float, with gamma/beta gradients.
#[derive(Clone, Debug)]
pub struct Student {
    fingerprint: u64,
    numel: Vec<usize>,
    /// Int8 scale per value (0 for f32 values).
    qscale: Vec<f32>,
    input: usize,
    logits_value: usize,
    nodes: Vec<SNode>,
    norms: Vec<NormLayer>,
    needs_grad: Vec<bool>,
    fake_quant: bool,
}

fn act_grad(act: &Act, x: f32) -> f32 {
    match *act {
        Act::None => 1.0,
        Act::Relu => (x > 0.0) as u8 as f32,
        Act::Clip { lo, hi } => (x > lo && x < hi) as u8 as f32,
        Act::LeakyRelu { alpha } => {
            if x >= 0.0 {
                1.0
            } else {
                alpha
            }
        }
        Act::Sigmoid => {
            let s = 1.0 / (1.0 + (-x).exp());
            s * (1.0 - s)
        }
        Act::HardSigmoid { alpha, beta } => {
            let v = alpha * x + beta;
            if v > 0.0 && v < 1.0 {
                alpha
            } else {
                0.0
            }
        }
        Act::HardSwish => {
            if x <= -3.0 {
                0.0
            } else if x >= 3.0 {
                1.0
            } else {
                x / 3.0 + 0.5
            }
        }
    }
}

impl Student {
    /// Build the student of `model` (its file's parameters).
    pub fn new(model: &Model) -> Result<Student> {
        let g: &Graph = model.graph();
        ensure!(
            g.inputs.len() == 1 && g.outputs.len() == 1,
            "the student supports one input and one output (model has {} and {})",
            g.inputs.len(),
            g.outputs.len()
        );
        let mut norms: Vec<NormLayer> = Vec::new();
        let mut norm_of = |prefix: &str, eps: f32, c: usize| -> Result<usize> {
            if let Some(i) = norms.iter().position(|n| n.prefix == prefix) {
                ensure!(
                    norms[i].channels() == c,
                    "normalization \"{prefix}\" used with {c} and {} channels",
                    norms[i].channels()
                );
                return Ok(i);
            }
            let p = model.norm_params(prefix, c)?;
            norms.push(NormLayer {
                prefix: prefix.into(),
                eps,
                gamma: p.gamma,
                beta: p.beta,
                mean: p.mean,
                var: p.var,
            });
            Ok(norms.len() - 1)
        };
        let mut nodes = Vec::with_capacity(g.nodes.len());
        for (i, node) in g.nodes.iter().enumerate() {
            let xv = node
                .inputs
                .first()
                .map(|&v| &g.values[v])
                .ok_or_else(|| anyhow!("node \"{}\" has no input", node.name))?;
            let yv = &g.values[node.output];
            let weights = |c_out: usize, k: usize| -> Result<Vec<f32>> {
                let w = node.op.weight().expect("conv/linear");
                let ws = model.tensor_f32(&w.scale, &[c_out])?;
                let mut out = vec![0f32; c_out * k];
                match w.kind {
                    WeightKind::Shift => {
                        let rows = model.shift_rows(i)?;
                        let bits = rows.bits();
                        for oc in 0..c_out {
                            for t in 0..k {
                                out[oc * k + t] = ws[oc] * bits.value(rows.get(oc, t)) as f32;
                            }
                        }
                    }
                    WeightKind::I8 => {
                        let q = model.tensor_i8(&w.tensor, &[c_out, k])?;
                        for (j, o) in out.iter_mut().enumerate() {
                            *o = ws[j / k] * q[j] as f32;
                        }
                    }
                    WeightKind::F32 => {
                        let q = model.tensor_f32(&w.tensor, &[c_out, k])?;
                        for (j, o) in out.iter_mut().enumerate() {
                            *o = ws[j / k] * q[j];
                        }
                    }
                }
                Ok(out)
            };
            let bias_of = |b: &Option<String>, c: usize| -> Result<Option<Vec<f32>>> {
                Ok(match b {
                    Some(b) => Some(model.tensor_f32(b, &[c])?.to_vec()),
                    None => None,
                })
            };
            let kind = match &node.op {
                Op::Quantize | Op::Dequantize | Op::Reshape => Kind::Identity,
                Op::Conv {
                    bias, norm, act, ..
                } => {
                    let geo = model
                        .conv_geom(i)
                        .ok_or_else(|| anyhow!("conv \"{}\" has no geometry", node.name))?;
                    let (oh, ow) = (yv.shape[2], yv.shape[3]);
                    let c_in_g = geo.c_in / geo.groups;
                    let k = c_in_g * geo.kh * geo.kw;
                    let p = oh * ow;
                    let mut col = vec![-1i32; k * p];
                    for ic in 0..c_in_g {
                        for ky in 0..geo.kh {
                            for kx in 0..geo.kw {
                                let t = (ic * geo.kh + ky) * geo.kw + kx;
                                for oy in 0..oh {
                                    let iy = (oy * geo.stride[0] + ky * geo.dilation[0]) as isize
                                        - geo.pads[0] as isize;
                                    for ox in 0..ow {
                                        let ix = (ox * geo.stride[1] + kx * geo.dilation[1])
                                            as isize
                                            - geo.pads[1] as isize;
                                        if iy >= 0
                                            && ix >= 0
                                            && (iy as usize) < geo.h
                                            && (ix as usize) < geo.w
                                        {
                                            col[t * p + oy * ow + ox] =
                                                ((ic * geo.h + iy as usize) * geo.w + ix as usize)
                                                    as i32;
                                        }
                                    }
                                }
                            }
                        }
                    }
                    let c = geo.c_out;
                    Kind::Conv {
                        groups: geo.groups,
                        c_out: c,
                        c_in_g,
                        in_plane: geo.h * geo.w,
                        p,
                        k,
                        col,
                        w: weights(c, k)?,
                        bias: bias_of(bias, c)?,
                        epi: Epilogue {
                            norm: match norm {
                                Some(n) => Some(norm_of(&n.prefix, n.eps, c)?),
                                None => None,
                            },
                            act: *act,
                            chan: Chan { c, inner: p },
                        },
                    }
                }
                Op::Linear {
                    bias, norm, act, ..
                } => {
                    let k = *xv.shape.last().unwrap_or(&0);
                    let n = *yv.shape.last().unwrap_or(&0);
                    ensure!(n > 0 && k > 0, "linear \"{}\" is empty", node.name);
                    Kind::Linear {
                        m: yv.numel() / n,
                        k,
                        n,
                        w: weights(n, k)?,
                        bias: bias_of(bias, n)?,
                        epi: Epilogue {
                            norm: match norm {
                                Some(nr) => Some(norm_of(&nr.prefix, nr.eps, n)?),
                                None => None,
                            },
                            act: *act,
                            chan: Chan { c: n, inner: 1 },
                        },
                    }
                }
                Op::Norm { norm, act } => {
                    let c = *xv.shape.get(1).unwrap_or(&1);
                    Kind::Norm {
                        epi: Epilogue {
                            norm: Some(norm_of(&norm.prefix, norm.eps, c)?),
                            act: *act,
                            chan: Chan {
                                c,
                                inner: xv.shape.get(2..).map_or(1, |s| s.iter().product()),
                            },
                        },
                    }
                }
                Op::Act { act } => Kind::Act(*act),
                Op::Add { act } => Kind::Add(*act),
                Op::MaxPool {
                    kernel,
                    strides,
                    pads,
                    dilations,
                } => pool(
                    xv.shape.as_slice(),
                    &yv.shape,
                    *kernel,
                    *strides,
                    *pads,
                    *dilations,
                    true,
                    false,
                )?,
                Op::AvgPool {
                    kernel,
                    strides,
                    pads,
                    count_include_pad,
                } => pool(
                    &xv.shape,
                    &yv.shape,
                    *kernel,
                    *strides,
                    *pads,
                    [1, 1],
                    false,
                    *count_include_pad,
                )?,
                Op::GlobalAvgPool => {
                    ensure!(xv.shape.len() == 4, "global pool of a non-NCHW value");
                    pool(
                        &xv.shape,
                        &yv.shape,
                        [xv.shape[2], xv.shape[3]],
                        [1, 1],
                        [0; 4],
                        [1, 1],
                        false,
                        false,
                    )?
                }
                Op::Concat { axis } => {
                    let outer: usize = yv.shape[..*axis].iter().product();
                    let inner: usize = yv.shape[axis + 1..].iter().product();
                    Kind::Concat {
                        outer,
                        chunks: node
                            .inputs
                            .iter()
                            .map(|&v| g.values[v].shape[*axis] * inner)
                            .collect(),
                    }
                }
                Op::Softmax { axis } => Kind::Softmax {
                    outer: yv.shape[..*axis].iter().product(),
                    n: yv.shape[*axis],
                    inner: yv.shape[axis + 1..].iter().product(),
                },
            };
            nodes.push(SNode {
                inputs: node.inputs.clone(),
                output: node.output,
                kind,
            });
        }
        // The loss wants logits: a final softmax is looked through.
        let mut logits_value = g.outputs[0];
        while let Some(n) = nodes
            .iter()
            .find(|n| n.output == logits_value && matches!(n.kind, Kind::Softmax { .. }))
        {
            logits_value = n.inputs[0];
        }
        // A value needs a gradient when a normalization layer feeds it.
        let mut needs_grad = vec![false; g.values.len()];
        for n in &nodes {
            let has_norm = match &n.kind {
                Kind::Conv { epi, .. } | Kind::Linear { epi, .. } | Kind::Norm { epi } => {
                    epi.norm.is_some()
                }
                _ => false,
            };
            if has_norm || n.inputs.iter().any(|&v| needs_grad[v]) {
                needs_grad[n.output] = true;
            }
        }
        Ok(Student {
            fingerprint: model.fingerprint(),
            numel: g.values.iter().map(|v| v.numel()).collect(),
            qscale: g
                .values
                .iter()
                .map(|v| if v.dtype == DType::I8 { v.scale } else { 0.0 })
                .collect(),
            input: g.inputs[0],
            logits_value,
            nodes,
            norms,
            needs_grad,
            fake_quant: g.mode == Mode::Int8,
        })
    }

    /// Fingerprint of the model this student emulates.
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    /// Elements of one input.
    pub fn input_len(&self) -> usize {
        self.numel[self.input]
    }

    /// Number of classes (logits per sample).
    pub fn classes(&self) -> usize {
        self.numel[self.logits_value]
    }

    /// The normalization layers, in graph order.
    pub fn norms(&self) -> &[NormLayer] {
        &self.norms
    }

    /// Mutable normalization layers (SGD updates gamma and beta in place).
    pub fn norms_mut(&mut self) -> &mut [NormLayer] {
        &mut self.norms
    }

    /// Round int8 values to their scale in the forward pass (see the module
    /// docs). No effect on a float-mode model.
    pub fn set_fake_quant(&mut self, on: bool) {
        self.fake_quant = on;
    }

    fn quant(&self, v: usize, x: &mut [f32]) {
        let s = self.qscale[v];
        if self.fake_quant && s > 0.0 {
            for e in x {
                *e = ((*e / s).round().clamp(-128.0, 127.0)) * s;
            }
        }
    }

    /// Evaluate a batch of inputs (each [`Student::input_len`] long).
    pub fn forward(&self, inputs: &[&[f32]]) -> Result<Forward> {
        let mut tapes = self.tapes(inputs)?;
        for ni in 0..self.nodes.len() {
            tapes.par_iter_mut().for_each(|t| {
                self.node_pre(ni, t);
                self.node_post(ni, t);
            });
        }
        Ok(Forward {
            tapes,
            logits_value: self.logits_value,
        })
    }

    /// Re-estimate every layer's mean and variance from a batch, layer by
    /// layer (each layer normalized with its new statistics before the next
    /// is measured), blended with `source` (same layer order):
    /// `stat = (1 - alpha) * source + alpha * batch`. Population (biased)
    /// variance over samples and positions.
    pub fn estimate_stats(
        &mut self,
        inputs: &[&[f32]],
        source: &[NormLayer],
        alpha: f32,
    ) -> Result<()> {
        self.estimate(inputs, source, alpha)
    }

    fn estimate(&mut self, inputs: &[&[f32]], source: &[NormLayer], alpha: f32) -> Result<()> {
        ensure!(
            source.len() == self.norms.len()
                && source
                    .iter()
                    .zip(&self.norms)
                    .all(|(a, b)| a.channels() == b.channels()),
            "source statistics do not match the model's layers"
        );
        let mut tapes = self.tapes(inputs)?;
        for ni in 0..self.nodes.len() {
            tapes.par_iter_mut().for_each(|t| self.node_pre(ni, t));
            if let (Some(l), Some(chan)) = (self.node_norm(ni), self.node_chan(ni)) {
                let c = chan.c;
                let (mut s, mut s2, mut cnt) = (vec![0f64; c], vec![0f64; c], vec![0f64; c]);
                for t in &tapes {
                    for (j, &z) in t.pre[ni].iter().enumerate() {
                        let ch = chan.of(j);
                        s[ch] += z as f64;
                        s2[ch] += z as f64 * z as f64;
                        cnt[ch] += 1.0;
                    }
                }
                let layer = &mut self.norms[l];
                for ch in 0..c {
                    if cnt[ch] == 0.0 {
                        continue;
                    }
                    let m = s[ch] / cnt[ch];
                    let v = (s2[ch] / cnt[ch] - m * m).max(0.0);
                    layer.mean[ch] = (1.0 - alpha) * source[l].mean[ch] + alpha * m as f32;
                    layer.var[ch] = (1.0 - alpha) * source[l].var[ch] + alpha * v as f32;
                }
            }
            let me = &*self;
            tapes.par_iter_mut().for_each(|t| me.node_post(ni, t));
        }
        Ok(())
    }

    fn tapes(&self, inputs: &[&[f32]]) -> Result<Vec<Tape>> {
        let n_in = self.input_len();
        for (i, x) in inputs.iter().enumerate() {
            if x.len() != n_in {
                bail!("input {i} has {} values, expected {n_in}", x.len());
            }
        }
        let (nv, nn) = (self.numel.len(), self.nodes.len());
        Ok(inputs
            .iter()
            .map(|x| {
                let mut t = Tape {
                    vals: vec![Vec::new(); nv],
                    pre: vec![Vec::new(); nn],
                    arg: vec![Vec::new(); nn],
                };
                t.vals[self.input] = x.to_vec();
                self.quant(self.input, &mut t.vals[self.input]);
                t
            })
            .collect())
    }

    fn node_norm(&self, ni: usize) -> Option<usize> {
        match &self.nodes[ni].kind {
            Kind::Conv { epi, .. } | Kind::Linear { epi, .. } | Kind::Norm { epi } => epi.norm,
            _ => None,
        }
    }

    fn node_chan(&self, ni: usize) -> Option<Chan> {
        match &self.nodes[ni].kind {
            Kind::Conv { epi, .. } | Kind::Linear { epi, .. } | Kind::Norm { epi } => {
                Some(epi.chan)
            }
            _ => None,
        }
    }

    /// Phase 1 of a node: everything up to the normalization (`z`), kept in
    /// `pre`; nodes without an epilogue do all their work here.
    fn node_pre(&self, ni: usize, t: &mut Tape) {
        let node = &self.nodes[ni];
        let x = &t.vals[node.inputs[0]];
        match &node.kind {
            Kind::Identity => {
                let mut y = x.clone();
                self.quant(node.output, &mut y);
                t.vals[node.output] = y;
            }
            Kind::Conv {
                groups,
                c_out,
                c_in_g,
                in_plane,
                p,
                k,
                col,
                w,
                bias,
                ..
            } => {
                let (p, k) = (*p, *k);
                let co_g = c_out / groups;
                let mut z = vec![0f32; c_out * p];
                let mut cols = vec![0f32; k * p];
                for g in 0..*groups {
                    let base = g * c_in_g * in_plane;
                    for (c, &ix) in cols.iter_mut().zip(col) {
                        *c = if ix >= 0 { x[base + ix as usize] } else { 0.0 };
                    }
                    for oc in g * co_g..(g + 1) * co_g {
                        let zr = &mut z[oc * p..(oc + 1) * p];
                        let wr = &w[oc * k..(oc + 1) * k];
                        for (tap, &wv) in wr.iter().enumerate() {
                            let cr = &cols[tap * p..(tap + 1) * p];
                            for (a, &b) in zr.iter_mut().zip(cr) {
                                *a += wv * b;
                            }
                        }
                        if let Some(b) = bias {
                            zr.iter_mut().for_each(|a| *a += b[oc]);
                        }
                    }
                }
                t.pre[ni] = z;
            }
            Kind::Linear {
                m, k, n, w, bias, ..
            } => {
                let (k, n) = (*k, *n);
                let mut z = vec![0f32; m * n];
                for r in 0..*m {
                    let xr = &x[r * k..(r + 1) * k];
                    for j in 0..n {
                        let wr = &w[j * k..(j + 1) * k];
                        let mut s: f32 = xr.iter().zip(wr).map(|(a, b)| a * b).sum();
                        if let Some(b) = bias {
                            s += b[j];
                        }
                        z[r * n + j] = s;
                    }
                }
                t.pre[ni] = z;
            }
            Kind::Norm { .. } | Kind::Act(_) => t.pre[ni] = x.clone(),
            Kind::Add(_) => {
                let x1 = &t.vals[node.inputs[1]];
                t.pre[ni] = x.iter().zip(x1).map(|(a, b)| a + b).collect();
            }
            Kind::Pool {
                max,
                c,
                in_plane,
                windows,
                div,
            } => {
                let op = windows.len();
                let mut y = vec![0f32; c * op];
                let mut arg = if *max { vec![0u32; c * op] } else { Vec::new() };
                for ch in 0..*c {
                    let xb = &x[ch * in_plane..(ch + 1) * in_plane];
                    for (q, win) in windows.iter().enumerate() {
                        let o = ch * op + q;
                        if *max {
                            let mut best: Option<(f32, u32)> = None;
                            for &i in win {
                                if best.is_none_or(|(v, _)| xb[i as usize] > v) {
                                    best = Some((xb[i as usize], i));
                                }
                            }
                            // A window with no in-bounds tap yields -inf on
                            // the device; it gets no gradient here.
                            let (v, i) = best.unwrap_or((f32::NEG_INFINITY, u32::MAX));
                            y[o] = v;
                            arg[o] = i;
                        } else if div[q] > 0.0 {
                            y[o] = win.iter().map(|&i| xb[i as usize]).sum::<f32>() / div[q];
                        }
                    }
                }
                self.quant(node.output, &mut y);
                t.vals[node.output] = y;
                t.arg[ni] = arg;
            }
            Kind::Concat { outer, chunks } => {
                let row: usize = chunks.iter().sum();
                let mut y = vec![0f32; outer * row];
                let mut col = 0;
                for (&v, &ch) in node.inputs.iter().zip(chunks) {
                    let xv = &t.vals[v];
                    for o in 0..*outer {
                        y[o * row + col..o * row + col + ch]
                            .copy_from_slice(&xv[o * ch..(o + 1) * ch]);
                    }
                    col += ch;
                }
                self.quant(node.output, &mut y);
                t.vals[node.output] = y;
            }
            Kind::Softmax { outer, n, inner } => {
                let mut y = vec![0f32; x.len()];
                for a in 0..*outer {
                    for b in 0..*inner {
                        let idx = |j: usize| (a * n + j) * inner + b;
                        let mx = (0..*n).map(|j| x[idx(j)]).fold(f32::NEG_INFINITY, f32::max);
                        let mut s = 0f32;
                        for j in 0..*n {
                            let e = (x[idx(j)] - mx).exp();
                            y[idx(j)] = e;
                            s += e;
                        }
                        for j in 0..*n {
                            y[idx(j)] /= s;
                        }
                    }
                }
                t.vals[node.output] = y;
            }
        }
    }

    /// `(k, b)` of `u = k * z + b` for channel `ch` of a normalization.
    #[inline]
    fn affine(&self, norm: Option<usize>, ch: usize) -> (f32, f32) {
        match norm {
            Some(l) => {
                let n = &self.norms[l];
                let inv = 1.0 / (n.var[ch] + n.eps).sqrt();
                let k = n.gamma[ch] * inv;
                (k, n.beta[ch] - k * n.mean[ch])
            }
            None => (1.0, 0.0),
        }
    }

    /// Phase 2: the normalization and the activation.
    fn node_post(&self, ni: usize, t: &mut Tape) {
        let node = &self.nodes[ni];
        let (norm, act, chan) = match &node.kind {
            Kind::Conv { epi, .. } | Kind::Linear { epi, .. } | Kind::Norm { epi } => {
                (epi.norm, epi.act, Some(epi.chan))
            }
            Kind::Act(a) | Kind::Add(a) => (None, *a, None),
            _ => return,
        };
        let z = &t.pre[ni];
        let mut y = vec![0f32; z.len()];
        match chan {
            Some(ch) => {
                let kb: Vec<(f32, f32)> = (0..ch.c).map(|c| self.affine(norm, c)).collect();
                for (j, (o, &zv)) in y.iter_mut().zip(z).enumerate() {
                    let (k, b) = kb[ch.of(j)];
                    *o = act.eval(k * zv + b);
                }
            }
            None => y.iter_mut().zip(z).for_each(|(o, &zv)| *o = act.eval(zv)),
        }
        self.quant(node.output, &mut y);
        t.vals[node.output] = y;
    }

    /// Gradients of a loss wrt every gamma and beta, given d loss / d logits
    /// per sample (as [`crate::loss::cema`] returns), summed over the batch.
    pub fn backward(&self, fwd: &Forward, dlogits: &[Vec<f32>]) -> Result<NormGrads> {
        ensure!(
            dlogits.len() == fwd.tapes.len(),
            "{} logit gradients for {} samples",
            dlogits.len(),
            fwd.tapes.len()
        );
        let c = self.classes();
        if let Some(d) = dlogits.iter().find(|d| d.len() != c) {
            bail!("logit gradient of {} values, expected {c}", d.len());
        }
        let zero = NormGrads::zeros(&self.norms);
        Ok(fwd
            .tapes
            .par_iter()
            .zip(dlogits)
            .map(|(t, d)| self.backward_one(t, d))
            .reduce(|| zero.clone(), NormGrads::add))
    }

    fn backward_one(&self, t: &Tape, dlogits: &[f32]) -> NormGrads {
        let mut pg = NormGrads::zeros(&self.norms);
        let mut grads: Vec<Option<Vec<f32>>> = vec![None; self.numel.len()];
        grads[self.logits_value] = Some(dlogits.to_vec());
        let add_into =
            |grads: &mut Vec<Option<Vec<f32>>>, v: usize, d: Vec<f32>| match &mut grads[v] {
                Some(g) => g.iter_mut().zip(d).for_each(|(a, b)| *a += b),
                None => grads[v] = Some(d),
            };
        for (ni, node) in self.nodes.iter().enumerate().rev() {
            let Some(mut dy) = grads[node.output].take() else {
                continue;
            };
            if !self.needs_grad[node.output] {
                continue;
            }
            // Straight-through rounding; no gradient where saturated.
            let s = self.qscale[node.output];
            if self.fake_quant && s > 0.0 && !matches!(node.kind, Kind::Identity) {
                let y = &t.vals[node.output];
                for (d, &v) in dy.iter_mut().zip(y) {
                    if v >= 127.0 * s || v <= -128.0 * s {
                        *d = 0.0;
                    }
                }
            }
            let want = |k: usize| self.needs_grad[node.inputs[k]];
            match &node.kind {
                Kind::Identity => add_into(&mut grads, node.inputs[0], dy),
                Kind::Conv {
                    groups,
                    c_out,
                    c_in_g,
                    in_plane,
                    p,
                    k,
                    col,
                    w,
                    epi,
                    ..
                } => {
                    let dz = self.epilogue_back(ni, t, epi, dy, &mut pg);
                    if want(0) {
                        let (p, k) = (*p, *k);
                        let co_g = c_out / groups;
                        let mut dx = vec![0f32; groups * c_in_g * in_plane];
                        let mut dcols = vec![0f32; k * p];
                        for g in 0..*groups {
                            dcols.iter_mut().for_each(|v| *v = 0.0);
                            for oc in g * co_g..(g + 1) * co_g {
                                let dr = &dz[oc * p..(oc + 1) * p];
                                let wr = &w[oc * k..(oc + 1) * k];
                                for (tap, &wv) in wr.iter().enumerate() {
                                    let cr = &mut dcols[tap * p..(tap + 1) * p];
                                    for (a, &b) in cr.iter_mut().zip(dr) {
                                        *a += wv * b;
                                    }
                                }
                            }
                            let base = g * c_in_g * in_plane;
                            for (&dc, &ix) in dcols.iter().zip(col) {
                                if ix >= 0 {
                                    dx[base + ix as usize] += dc;
                                }
                            }
                        }
                        add_into(&mut grads, node.inputs[0], dx);
                    }
                }
                Kind::Linear {
                    m, k, n, w, epi, ..
                } => {
                    let dz = self.epilogue_back(ni, t, epi, dy, &mut pg);
                    if want(0) {
                        let (k, n) = (*k, *n);
                        let mut dx = vec![0f32; m * k];
                        for r in 0..*m {
                            let dxr = &mut dx[r * k..(r + 1) * k];
                            for j in 0..n {
                                let d = dz[r * n + j];
                                let wr = &w[j * k..(j + 1) * k];
                                dxr.iter_mut().zip(wr).for_each(|(a, &b)| *a += d * b);
                            }
                        }
                        add_into(&mut grads, node.inputs[0], dx);
                    }
                }
                Kind::Norm { epi } => {
                    let dz = self.epilogue_back(ni, t, epi, dy, &mut pg);
                    if want(0) {
                        add_into(&mut grads, node.inputs[0], dz);
                    }
                }
                Kind::Act(a) => {
                    let z = &t.pre[ni];
                    dy.iter_mut()
                        .zip(z)
                        .for_each(|(d, &zv)| *d *= act_grad(a, zv));
                    add_into(&mut grads, node.inputs[0], dy);
                }
                Kind::Add(a) => {
                    let z = &t.pre[ni];
                    dy.iter_mut()
                        .zip(z)
                        .for_each(|(d, &zv)| *d *= act_grad(a, zv));
                    if want(1) {
                        add_into(&mut grads, node.inputs[1], dy.clone());
                    }
                    if want(0) {
                        add_into(&mut grads, node.inputs[0], dy);
                    }
                }
                Kind::Pool {
                    max,
                    c,
                    in_plane,
                    windows,
                    div,
                } => {
                    if want(0) {
                        let op = windows.len();
                        let mut dx = vec![0f32; c * in_plane];
                        for ch in 0..*c {
                            let db = &mut dx[ch * in_plane..(ch + 1) * in_plane];
                            for (q, win) in windows.iter().enumerate() {
                                let o = ch * op + q;
                                if *max {
                                    let i = t.arg[ni][o];
                                    if i != u32::MAX {
                                        db[i as usize] += dy[o];
                                    }
                                } else if div[q] > 0.0 {
                                    let d = dy[o] / div[q];
                                    win.iter().for_each(|&i| db[i as usize] += d);
                                }
                            }
                        }
                        add_into(&mut grads, node.inputs[0], dx);
                    }
                }
                Kind::Concat { outer, chunks } => {
                    let row: usize = chunks.iter().sum();
                    let mut col = 0;
                    for (kk, (&v, &ch)) in node.inputs.iter().zip(chunks).enumerate() {
                        if want(kk) {
                            let mut dx = vec![0f32; outer * ch];
                            for o in 0..*outer {
                                dx[o * ch..(o + 1) * ch]
                                    .copy_from_slice(&dy[o * row + col..o * row + col + ch]);
                            }
                            add_into(&mut grads, v, dx);
                        }
                        col += ch;
                    }
                }
                Kind::Softmax { outer, n, inner } => {
                    if want(0) {
                        let y = &t.vals[node.output];
                        let mut dx = vec![0f32; y.len()];
                        for a in 0..*outer {
                            for b in 0..*inner {
                                let idx = |j: usize| (a * n + j) * inner + b;
                                let dot: f32 = (0..*n).map(|j| y[idx(j)] * dy[idx(j)]).sum();
                                for j in 0..*n {
                                    dx[idx(j)] = y[idx(j)] * (dy[idx(j)] - dot);
                                }
                            }
                        }
                        add_into(&mut grads, node.inputs[0], dx);
                    }
                }
            }
        }
        pg
    }

    /// Backward through `y = act(k (z - mean) + beta)`: accumulates d gamma
    /// and d beta, returns d z.
    fn epilogue_back(
        &self,
        ni: usize,
        t: &Tape,
        epi: &Epilogue,
        mut dy: Vec<f32>,
        pg: &mut NormGrads,
    ) -> Vec<f32> {
        let z = &t.pre[ni];
        let c = epi.chan.c;
        let kb: Vec<(f32, f32)> = (0..c).map(|ch| self.affine(epi.norm, ch)).collect();
        for (j, (d, &zv)) in dy.iter_mut().zip(z).enumerate() {
            let (k, b) = kb[epi.chan.of(j)];
            *d *= act_grad(&epi.act, k * zv + b);
        }
        if let Some(l) = epi.norm {
            let n = &self.norms[l];
            let inv: Vec<f32> = (0..c).map(|ch| 1.0 / (n.var[ch] + n.eps).sqrt()).collect();
            for (j, (&d, &zv)) in dy.iter().zip(z).enumerate() {
                let ch = epi.chan.of(j);
                pg.gamma[l][ch] += d * (zv - n.mean[ch]) * inv[ch];
                pg.beta[l][ch] += d;
            }
            for (j, d) in dy.iter_mut().enumerate() {
                *d *= kb[epi.chan.of(j)].0;
            }
        }
        dy
    }
}

/// Windows of a pooling node (per output position of one plane).
#[allow(clippy::too_many_arguments)]
fn pool(
    xs: &[usize],
    ys: &[usize],
    kernel: [usize; 2],
    stride: [usize; 2],
    pads: [usize; 4],
    dil: [usize; 2],
    max: bool,
    cip: bool,
) -> Result<Kind> {
    ensure!(
        xs.len() == 4 && ys.len() == 4,
        "pooling of a non-NCHW value"
    );
    let (c, h, w) = (xs[1], xs[2], xs[3]);
    let (oh, ow) = (ys[2], ys[3]);
    let mut windows = Vec::with_capacity(oh * ow);
    let mut div = Vec::with_capacity(oh * ow);
    for oy in 0..oh {
        for ox in 0..ow {
            let mut win = Vec::new();
            let mut padded = 0usize;
            for ky in 0..kernel[0] {
                let iy = (oy * stride[0] + ky * dil[0]) as isize - pads[0] as isize;
                for kx in 0..kernel[1] {
                    let ix = (ox * stride[1] + kx * dil[1]) as isize - pads[1] as isize;
                    if iy < (h + pads[2]) as isize && ix < (w + pads[3]) as isize {
                        padded += 1;
                    }
                    if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w {
                        win.push((iy as usize * w + ix as usize) as u32);
                    }
                }
            }
            div.push(if cip { padded } else { win.len() } as f32);
            windows.push(win);
        }
    }
    Ok(Kind::Pool {
        max,
        c,
        in_plane: h * w,
        windows,
        div,
    })
}

impl Student {
    /// Load parameters by prefix (gamma and beta, and mean/var when given).
    pub fn set_layer(
        &mut self,
        prefix: &str,
        gamma: &[f32],
        beta: &[f32],
        mean: Option<&[f32]>,
        var: Option<&[f32]>,
    ) -> Result<()> {
        let l = self
            .norms
            .iter_mut()
            .find(|n| n.prefix == prefix)
            .with_context(|| format!("no normalization layer \"{prefix}\""))?;
        let c = l.channels();
        for (name, v) in [
            ("gamma", Some(gamma)),
            ("beta", Some(beta)),
            ("mean", mean),
            ("var", var),
        ] {
            if let Some(v) = v {
                ensure!(
                    v.len() == c,
                    "{prefix}.{name} has {} values, expected {c}",
                    v.len()
                );
                ensure!(
                    v.iter().all(|x| x.is_finite()),
                    "{prefix}.{name} is not finite"
                );
            }
        }
        if let Some(v) = var {
            ensure!(v.iter().all(|&x| x >= 0.0), "{prefix}.var is negative");
        }
        l.gamma.copy_from_slice(gamma);
        l.beta.copy_from_slice(beta);
        if let Some(m) = mean {
            l.mean.copy_from_slice(m);
        }
        if let Some(v) = var {
            l.var.copy_from_slice(v);
        }
        Ok(())
    }
}
