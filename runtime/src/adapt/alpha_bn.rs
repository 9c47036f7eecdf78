//! Forward-only local adaptation without a cloud: alpha-BN (no_std).
//!
//! BatchNorm statistics are re-estimated from recent inputs and mixed with
//! the source (model file) statistics:
//! `mean = (1 - a) mean_src + a mean_batch`, `var = (1 - a) var_src + a var_batch`
//! (`a` = [`AlphaBnConfig::alpha`], 0.1). Gamma and beta are kept from the
//! parameters being updated (so this composes with cloud patches).
//!
//! # Which activations
//!
//! The statistics a BatchNorm needs are those of its *pre-norm* input `z`.
//!
//! - A standalone `Norm` node: `z` is its input value, observed as the
//!   output of the node producing it (or taken from the graph input).
//! - A norm fused into a conv/linear node: the node's output is
//!   `act(k (z - mean) + beta)`, and a clamping activation (ReLU) destroys
//!   the negative half of `z`, so `z` cannot be recovered from the output.
//!   Instead, when the observer sees the fused node's *input*, `z` is
//!   recomputed from it: the same weights with the epilogue replaced by the
//!   identity affine `ws * acc + bias` (no norm, no clamp), with the scalar
//!   float kernels (int8 inputs are dequantized first; shift weights use
//!   `conv_shift_f32`, int8 weights are widened to f32 once at
//!   construction). This is exact in float mode and exact up to float
//!   rounding of the integer accumulator in int8 mode, and costs one extra
//!   conv per normalized layer per observed sample — a local mode for
//!   occasional recalibration, not for every inference.
//!
//! Per channel, `sum z` and `sum z^2` accumulate in f64 over all samples
//! observed since the last [`AlphaBn::update`]; the batch variance is the
//! population variance. Observing allocates nothing.

use crate::derive::Prepared;
use crate::error::{Error, Result};
use crate::exec::{Session, ValueView};
use crate::graph::{DType, Op, WeightKind};
use crate::model::{Model, NormParams};
use alloc::{collections::BTreeMap, format, string::String, vec, vec::Vec};
use shiftnn_kernels::scalar::{self, Affine};
use shiftnn_kernels::{Conv2dGeom, PackedRows};

/// Settings of alpha-BN.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AlphaBnConfig {
    /// Weight `a` of the batch statistics.
    pub alpha: f32,
}

impl Default for AlphaBnConfig {
    fn default() -> Self {
        AlphaBnConfig { alpha: 0.1 }
    }
}

enum Weights<'m> {
    Shift(PackedRows<'m>),
    F32(&'m [f32]),
    Owned(Vec<f32>),
}

enum Source<'m> {
    /// Standalone norm: its input is `z`.
    Direct,
    /// Fused into conv/linear: recompute `z` from the input.
    Fused {
        geom: Conv2dGeom,
        weights: Weights<'m>,
        ep: Vec<Affine>,
        linear: bool,
    },
}

struct Layer<'m> {
    prefix: String,
    /// Graph value whose contents are the layer's input.
    input: usize,
    c: usize,
    source: Source<'m>,
    sum: Vec<f64>,
    sumsq: Vec<f64>,
    count: u64,
}

/// Alpha-BN statistics collector for one model.
pub struct AlphaBn<'m> {
    model: &'m Model<'m>,
    cfg: AlphaBnConfig,
    layers: Vec<Layer<'m>>,
    src: BTreeMap<String, NormParams>,
    xbuf: Vec<f32>,
    zbuf: Vec<f32>,
    samples: u64,
}

impl<'m> AlphaBn<'m> {
    /// Prepare collectors for every normalization layer of `model`.
    pub fn new(model: &'m Model<'m>, cfg: AlphaBnConfig) -> Result<AlphaBn<'m>> {
        let g = model.graph();
        let mut layers = Vec::new();
        let mut src = BTreeMap::new();
        let (mut xmax, mut zmax) = (0, 0);
        for (i, node) in g.nodes.iter().enumerate() {
            let Some(nr) = node.op.norm() else { continue };
            let input = *node
                .inputs
                .first()
                .ok_or_else(|| Error::Graph(format!("node {i} has no input")))?;
            let (c, source) = match &node.op {
                Op::Norm { .. } => (
                    g.values[input].shape.get(1).copied().unwrap_or(0),
                    Source::Direct,
                ),
                Op::Conv { weight, bias, .. } | Op::Linear { weight, bias, .. } => {
                    let geom = model
                        .conv_geom(i)
                        .ok_or_else(|| Error::Graph(format!("node {i}: no geometry")))?;
                    let c = geom.c_out;
                    let k = geom.k();
                    let weights = match weight.kind {
                        WeightKind::Shift => Weights::Shift(model.shift_rows(i)?),
                        WeightKind::F32 => Weights::F32(model.tensor_f32(&weight.tensor, &[c, k])?),
                        WeightKind::I8 => Weights::Owned(
                            model
                                .tensor_i8(&weight.tensor, &[c, k])?
                                .iter()
                                .map(|&w| w as f32)
                                .collect(),
                        ),
                    };
                    let ws = model.tensor_f32(&weight.scale, &[c])?;
                    let b = match bias {
                        Some(b) => Some(model.tensor_f32(b, &[c])?),
                        None => None,
                    };
                    let ep = (0..c)
                        .map(|ch| Affine {
                            scale: ws[ch],
                            bias: b.map_or(0.0, |b| b[ch]),
                            ..Affine::IDENTITY
                        })
                        .collect();
                    let linear = matches!(node.op, Op::Linear { .. });
                    let (in_len, out_len) = if linear {
                        (geom.c_in, geom.c_out)
                    } else {
                        (geom.in_len(), geom.out_len())
                    };
                    xmax = xmax.max(g.values[input].numel()).max(in_len);
                    zmax = zmax.max(out_len);
                    (
                        c,
                        Source::Fused {
                            geom,
                            weights,
                            ep,
                            linear,
                        },
                    )
                }
                _ => continue,
            };
            if g.values[input].dtype == DType::I8 {
                xmax = xmax.max(g.values[input].numel());
            }
            src.insert(nr.prefix.clone(), model.norm_params(&nr.prefix, c)?);
            layers.push(Layer {
                prefix: nr.prefix.clone(),
                input,
                c,
                source,
                sum: vec![0.0; c],
                sumsq: vec![0.0; c],
                count: 0,
            });
        }
        Ok(AlphaBn {
            model,
            cfg,
            layers,
            src,
            xbuf: vec![0.0; xmax],
            zbuf: vec![0.0; zmax],
            samples: 0,
        })
    }

    /// Samples observed since the last update.
    pub fn samples(&self) -> u64 {
        self.samples
    }

    /// Prefixes of the layers collected.
    pub fn prefixes(&self) -> impl Iterator<Item = &str> {
        self.layers.iter().map(|l| l.prefix.as_str())
    }

    /// Feed the contents of graph value `value` (called from the observer
    /// and for graph inputs).
    fn feed(&mut self, value: usize, view: ValueView<'_>) {
        for l in self.layers.iter_mut().filter(|l| l.input == value) {
            let x: &[f32] = match view {
                ValueView::F32(x) => x,
                ValueView::I8(q, s) => {
                    let xb = &mut self.xbuf[..q.len()];
                    for (d, &v) in xb.iter_mut().zip(q) {
                        *d = v as f32 * s;
                    }
                    xb
                }
            };
            match &l.source {
                Source::Direct => accumulate(l.c, x, &mut l.sum, &mut l.sumsq, &mut l.count),
                Source::Fused {
                    geom,
                    weights,
                    ep,
                    linear,
                } => {
                    let (in_len, out_len) = if *linear {
                        (geom.c_in, geom.c_out)
                    } else {
                        (geom.in_len(), geom.out_len())
                    };
                    let rows = x.len() / in_len.max(1);
                    for r in 0..rows {
                        let xr = &x[r * in_len..(r + 1) * in_len];
                        let z = &mut self.zbuf[..out_len];
                        match weights {
                            Weights::Shift(w) => scalar::conv_shift_f32(geom, xr, w, 0, ep, z),
                            Weights::F32(w) => scalar::conv_f32(geom, xr, w, 0, ep, z),
                            Weights::Owned(w) => scalar::conv_f32(geom, xr, w, 0, ep, z),
                        }
                        accumulate(l.c, z, &mut l.sum, &mut l.sumsq, &mut l.count);
                    }
                }
            }
        }
    }

    /// Run `session` on one sample and collect statistics from it.
    pub fn run(
        &mut self,
        session: &mut Session<'_, '_>,
        inputs: &[&[f32]],
        outputs: &mut [&mut [f32]],
    ) -> Result<()> {
        let g = self.model.graph();
        if session.model().fingerprint() != self.model.fingerprint() {
            return Err(Error::Io("the session runs another model".into()));
        }
        let nodes = &g.nodes;
        session.run_observed(
            inputs,
            outputs,
            Some(&mut |i, view| self.feed(nodes[i].output, view)),
        )?;
        for (&v, x) in g.inputs.iter().zip(inputs) {
            self.feed(v, ValueView::F32(x));
        }
        self.samples += 1;
        Ok(())
    }

    /// The alpha-BN statistics of each layer observed since the last
    /// update, with gamma and beta taken from `base`.
    pub fn estimates(&self, base: &Prepared) -> Result<Vec<(String, NormParams)>> {
        let a = self.cfg.alpha as f64;
        let mut out = Vec::new();
        for l in self.layers.iter().filter(|l| l.count > 0) {
            let src = &self.src[&l.prefix];
            let cur = base
                .norms
                .get(&l.prefix)
                .ok_or_else(|| Error::Patch(format!("no normalization layer \"{}\"", l.prefix)))?;
            let n = l.count as f64;
            let mut mean = vec![0f32; l.c];
            let mut var = vec![0f32; l.c];
            for ch in 0..l.c {
                let mb = l.sum[ch] / n;
                let vb = (l.sumsq[ch] / n - mb * mb).max(0.0);
                mean[ch] = ((1.0 - a) * src.mean[ch] as f64 + a * mb) as f32;
                var[ch] = ((1.0 - a) * src.var[ch] as f64 + a * vb) as f32;
            }
            out.push((
                l.prefix.clone(),
                NormParams {
                    gamma: cur.gamma.clone(),
                    beta: cur.beta.clone(),
                    mean,
                    var,
                },
            ));
        }
        Ok(out)
    }

    /// Build new parameters from `base` with every observed layer's
    /// statistics replaced (all or nothing), and start a new batch. Swap
    /// the result in with `Session::set_prepared` or `SharedParams::store`.
    pub fn update(&mut self, base: &Prepared) -> Result<Prepared> {
        let mut next = base.clone();
        for (prefix, p) in self.estimates(base)? {
            next.set_norm(self.model, &prefix, p)?;
        }
        self.reset();
        Ok(next)
    }

    /// Forget the statistics collected so far.
    pub fn reset(&mut self) {
        for l in &mut self.layers {
            l.sum.fill(0.0);
            l.sumsq.fill(0.0);
            l.count = 0;
        }
        self.samples = 0;
    }
}

/// Add one sample's channel-major values (`c` planes) to the sums.
fn accumulate(c: usize, z: &[f32], sum: &mut [f64], sumsq: &mut [f64], count: &mut u64) {
    let plane = z.len() / c.max(1);
    if plane == 0 {
        return;
    }
    for ch in 0..c {
        for &v in &z[ch * plane..(ch + 1) * plane] {
            sum[ch] += v as f64;
            sumsq[ch] += v as f64 * v as f64;
        }
    }
    *count += plane as u64;
}
