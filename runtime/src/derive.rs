//! Per-node parameters derived at load from the file's tensors: integer
//! requantizers (int8 mode) or float epilogues (float mode), lookup tables
//! for elementwise functions. Derived again for the affected nodes when a
//! normalization layer's parameters change (adaptation), never per run.

use crate::error::{Error, Result};
use crate::graph::{Act, DType, Mode, Op, Value};
use crate::model::{Model, NormParams};
use alloc::{boxed::Box, collections::BTreeMap, format, string::String, vec::Vec};
use shiftnn_kernels::scalar::{AddRequant, Affine};
use shiftnn_kernels::Requant;

/// Parameters one node needs at run time.
#[derive(Clone, Debug, PartialEq)]
pub enum NodeParams {
    /// Nothing to derive.
    None,
    /// Per-channel integer requantizers (int8 conv/linear/norm).
    Requant(Vec<Requant>),
    /// Per-channel float epilogues (float conv/linear/norm).
    Affine(Vec<Affine>),
    /// A 256-entry table (int8 elementwise activation).
    Lut(Box<[i8; 256]>),
    /// Integer add of two scales.
    Add(AddRequant),
    /// One requantizer per concat input (int8).
    Concat(Vec<Requant>),
}

/// Everything derived from a model for execution: per-node parameters and
/// the current normalization parameters (initially the file's).
#[derive(Clone, Debug)]
pub struct Prepared {
    /// Per node, in graph order.
    pub params: Vec<NodeParams>,
    /// Current normalization parameters by tensor prefix.
    pub norms: BTreeMap<String, NormParams>,
}

fn q_bound(v: f32, scale: f32) -> i8 {
    if v == f32::INFINITY {
        return 127;
    }
    if v == f32::NEG_INFINITY {
        return -128;
    }
    shiftnn_kernels::requant::round_f64(v as f64 / scale as f64).clamp(-128, 127) as i8
}

fn int8_bounds(act: &Act, scale: f32) -> (i8, i8) {
    let (lo, hi) = act
        .clamp_bounds()
        .unwrap_or((f32::NEG_INFINITY, f32::INFINITY));
    (q_bound(lo, scale), q_bound(hi, scale))
}

impl Prepared {
    /// Derive every node's parameters from the model's own tensors.
    pub fn new(model: &Model) -> Result<Prepared> {
        let g = model.graph();
        let mut norms = BTreeMap::new();
        for (prefix, c) in Self::norm_channels(model)? {
            norms.insert(prefix.into(), model.norm_params(prefix, c)?);
        }
        let mut p = Prepared {
            params: Vec::with_capacity(g.nodes.len()),
            norms,
        };
        for i in 0..g.nodes.len() {
            let np = p.derive_node(model, i)?;
            p.params.push(np);
        }
        Ok(p)
    }

    /// Every normalization layer of `model` (prefix, channel count), in
    /// byte order of prefix: the keys of [`Prepared::norms`], without
    /// deriving anything.
    pub fn norm_channels<'m>(model: &'m Model) -> Result<BTreeMap<&'m str, usize>> {
        let g = model.graph();
        let mut out = BTreeMap::new();
        for (i, node) in g.nodes.iter().enumerate() {
            if let Some(n) = node.op.norm() {
                let c = match &node.op {
                    Op::Norm { .. } => g.values[node.inputs[0]].shape[1],
                    _ => model.conv_geom(i).map(|g| g.c_out).unwrap_or(0),
                };
                out.insert(n.prefix.as_str(), c);
            }
        }
        Ok(out)
    }

    /// Replace one normalization layer's parameters and re-derive the nodes
    /// that read them. On error nothing changes.
    pub fn set_norm(&mut self, model: &Model, prefix: &str, params: NormParams) -> Result<()> {
        *self = self.with_norms(model, [(prefix, params)])?;
        Ok(())
    }

    /// A copy with several normalization layers replaced, each re-derived
    /// node derived once (a patch of every layer costs one copy, not one per
    /// layer). Checks as [`Prepared::set_norm`]; on error `self` is
    /// untouched and nothing is returned.
    pub fn with_norms<'p>(
        &self,
        model: &Model,
        updates: impl IntoIterator<Item = (&'p str, NormParams)>,
    ) -> Result<Prepared> {
        let mut next = self.clone();
        let mut touched = BTreeMap::new();
        for (prefix, params) in updates {
            let old = self
                .norms
                .get(prefix)
                .ok_or_else(|| Error::Patch(format!("no normalization layer \"{prefix}\"")))?;
            let c = old.gamma.len();
            for (n, v) in [
                ("gamma", &params.gamma),
                ("beta", &params.beta),
                ("mean", &params.mean),
                ("var", &params.var),
            ] {
                if v.len() != c {
                    return Err(Error::Patch(format!(
                        "{prefix}.{n} has {} values, expected {c}",
                        v.len()
                    )));
                }
                if v.iter().any(|x| !x.is_finite()) {
                    return Err(Error::Patch(format!("{prefix}.{n} holds NaN or infinity")));
                }
            }
            if params.var.iter().any(|&v| v < 0.0) {
                return Err(Error::Patch(format!("{prefix}.var is negative")));
            }
            touched.insert(prefix, ());
            next.norms.insert(prefix.into(), params);
        }
        for (i, node) in model.graph().nodes.iter().enumerate() {
            if node
                .op
                .norm()
                .is_some_and(|n| touched.contains_key(n.prefix.as_str()))
            {
                next.params[i] = next.derive_node(model, i)?;
            }
        }
        Ok(next)
    }

    fn derive_node(&self, model: &Model, i: usize) -> Result<NodeParams> {
        let g = model.graph();
        let node = &g.nodes[i];
        let y: &Value = &g.values[node.output];
        let x = |k: usize| &g.values[node.inputs[k]];
        let int8 = g.mode == Mode::Int8;
        Ok(match &node.op {
            Op::Conv {
                weight,
                bias,
                norm,
                act,
                ..
            }
            | Op::Linear {
                weight,
                bias,
                norm,
                act,
            } => {
                let c = model.conv_geom(i).map(|g| g.c_out).unwrap_or(0);
                let ws = model.tensor_f32(&weight.scale, &[c])?;
                let b = match bias {
                    Some(b) => Some(model.tensor_f32(b, &[c])?),
                    None => None,
                };
                let nrm = match norm {
                    Some(n) => Some((self.norm(&n.prefix)?, n.eps)),
                    None => None,
                };
                // y = k * (ws * acc_real + bias - mean) + beta, acc_real = s_x * acc.
                let per_channel = |ch: usize| -> (f64, f64) {
                    let bias = b.map_or(0.0, |b| b[ch] as f64);
                    let (k, mean, beta) = match nrm {
                        Some((p, eps)) => (
                            p.gamma[ch] as f64 / libm::sqrt(p.var[ch] as f64 + eps as f64),
                            p.mean[ch] as f64,
                            p.beta[ch] as f64,
                        ),
                        None => (1.0, 0.0, 0.0),
                    };
                    (k * ws[ch] as f64, k * (bias - mean) + beta)
                };
                self.epilogue(int8, c, x(0), y, act, per_channel)
            }
            Op::Norm { norm, act } => {
                let p = self.norm(&norm.prefix)?;
                let c = p.gamma.len();
                let per_channel = |ch: usize| {
                    let k = p.gamma[ch] as f64 / libm::sqrt(p.var[ch] as f64 + norm.eps as f64);
                    (k, p.beta[ch] as f64 - k * p.mean[ch] as f64)
                };
                self.epilogue(int8, c, x(0), y, act, per_channel)
            }
            Op::Act { act } if int8 => {
                let mut t = Box::new([0i8; 256]);
                for q in -128i32..=127 {
                    let v = act.eval(q as f32 * x(0).scale);
                    let r = if v.is_nan() { 0 } else { q_bound(v, y.scale) };
                    t[(q as i8 as u8) as usize] = r;
                }
                NodeParams::Lut(t)
            }
            Op::Add { act } if int8 => {
                let (lo, hi) = int8_bounds(act, y.scale);
                NodeParams::Add(AddRequant::from_real(
                    x(0).scale as f64 / y.scale as f64,
                    x(1).scale as f64 / y.scale as f64,
                    lo,
                    hi,
                ))
            }
            Op::Concat { .. } if int8 => NodeParams::Concat(
                node.inputs
                    .iter()
                    .map(|&v| {
                        Requant::from_real(
                            g.values[v].scale as f64 / y.scale as f64,
                            0.0,
                            -128,
                            127,
                        )
                    })
                    .collect(),
            ),
            _ => NodeParams::None,
        })
    }

    fn norm(&self, prefix: &str) -> Result<&NormParams> {
        self.norms.get(prefix).ok_or_else(|| Error::Tensor {
            name: prefix.into(),
            problem: "normalization parameters missing".into(),
        })
    }

    /// Per-channel epilogue of `y = a * acc_real + b`: in int8 mode
    /// `acc_real = s_x * acc` and the result is divided by `s_y`.
    fn epilogue(
        &self,
        int8: bool,
        c: usize,
        x: &Value,
        y: &Value,
        act: &Act,
        per_channel: impl Fn(usize) -> (f64, f64),
    ) -> NodeParams {
        if int8 {
            debug_assert_eq!(x.dtype, DType::I8);
            let (lo, hi) = int8_bounds(act, y.scale);
            let (sx, sy) = (x.scale as f64, y.scale as f64);
            NodeParams::Requant(
                (0..c)
                    .map(|ch| {
                        let (a, b) = per_channel(ch);
                        Requant::from_real(a * sx / sy, b / sy, lo, hi)
                    })
                    .collect(),
            )
        } else {
            let (lo, hi) = act
                .clamp_bounds()
                .unwrap_or((f32::NEG_INFINITY, f32::INFINITY));
            NodeParams::Affine(
                (0..c)
                    .map(|ch| {
                        let (a, b) = per_channel(ch);
                        Affine {
                            scale: a as f32,
                            bias: b as f32,
                            lo,
                            hi,
                        }
                    })
                    .collect(),
            )
        }
    }
}
