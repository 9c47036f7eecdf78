//! The executor: runs a validated model node by node inside one arena.
//! Nothing here allocates; every buffer was sized at load.

use crate::derive::{NodeParams, Prepared};
use crate::error::{Error, Result};
use crate::graph::{DType, Mode, Op, WeightKind};
use crate::model::{Batched, Model};
use crate::parallel::{par_conv, par_elementwise, par_planes, Threads};
use crate::planner::ALIGN;
use alloc::{format, sync::Arc, vec, vec::Vec};
use core::ops::Range;
use shiftnn_kernels::dispatch::{self, KernelFn};
use shiftnn_kernels::gemm::DecodedRows;
use shiftnn_kernels::lists::ExpLists;
use shiftnn_kernels::scalar::{self, PoolGeom};
use shiftnn_kernels::Conv2dGeom;

/// Called after each node with the node index and its output, for
/// calibration, per-layer diffs and profiling.
pub type Observer<'o> = &'o mut (dyn FnMut(usize, ValueView<'_>) + Send);

/// A read-only view of one activation, passed to an [`Observer`].
#[derive(Clone, Copy, Debug)]
pub enum ValueView<'a> {
    /// f32 values.
    F32(&'a [f32]),
    /// int8 values and their scale.
    I8(&'a [i8], f32),
}

enum Arena<'b> {
    /// Owned; `u64` words keep the base 8-byte aligned, and `skip` bytes
    /// bring it to [`ALIGN`].
    Owned(Vec<u64>, usize),
    Borrowed(&'b mut [u8]),
}

impl Arena<'_> {
    fn bytes(&mut self, n: usize) -> &mut [u8] {
        match self {
            Arena::Owned(v, skip) => &mut bytemuck::cast_slice_mut::<u64, u8>(v)[*skip..*skip + n],
            Arena::Borrowed(b) => &mut b[..n],
        }
    }
}

/// An inference session: a model, its derived parameters and an arena.
pub struct Session<'m, 'b> {
    model: &'m Model<'m>,
    prepared: Arc<Prepared>,
    arena: Arena<'b>,
    #[cfg(feature = "std")]
    pool: Option<Threads>,
    /// Shared parameters and the generation last loaded from them.
    #[cfg(feature = "std")]
    shared: Option<(Arc<crate::adapt::SharedParams>, u64)>,
    /// Float layers run the scalar reference kernels ([`Session::set_reference_kernels`]).
    reference: bool,
}

impl<'m> Session<'m, 'static> {
    /// A session with an arena allocated now (the only allocation).
    pub fn new(model: &'m Model<'m>) -> Result<Session<'m, 'static>> {
        let words = (model.arena_bytes() + ALIGN).div_ceil(8);
        let v = vec![0u64; words];
        let skip = (ALIGN - (v.as_ptr() as usize) % ALIGN) % ALIGN;
        Ok(Session {
            model,
            prepared: Arc::new(Prepared::new(model)?),
            arena: Arena::Owned(v, skip),
            #[cfg(feature = "std")]
            pool: None,
            #[cfg(feature = "std")]
            shared: None,
            reference: false,
        })
    }
}

impl<'m, 'b> Session<'m, 'b> {
    /// A session running in the caller's arena (firmware: a static buffer of
    /// [`Model::arena_bytes`] bytes, 64-byte aligned; a misaligned buffer
    /// needs up to 63 bytes more).
    pub fn with_arena(model: &'m Model<'m>, arena: &'b mut [u8]) -> Result<Session<'m, 'b>> {
        let skip = (ALIGN - (arena.as_ptr() as usize) % ALIGN) % ALIGN;
        let needed = model.arena_bytes() + skip;
        if arena.len() < needed {
            return Err(Error::ArenaTooSmall {
                needed,
                given: arena.len(),
            });
        }
        let arena = &mut arena[skip..];
        Ok(Session {
            model,
            prepared: Arc::new(Prepared::new(model)?),
            arena: Arena::Borrowed(arena),
            #[cfg(feature = "std")]
            pool: None,
            #[cfg(feature = "std")]
            shared: None,
            reference: false,
        })
    }

    /// Run float-mode conv and linear layers with the scalar reference
    /// kernels instead of the fastest ones (`false` by default). The SIMD
    /// float kernels add in another order than `scalar`, so their results
    /// differ in the last bits from CPU to CPU; with this set, float
    /// outputs are the same on every machine (int8 outputs always are).
    /// The converter calibrates this way, so a model converts to the same
    /// bytes everywhere.
    pub fn set_reference_kernels(&mut self, on: bool) {
        self.reference = on;
    }

    /// Use `n` threads for conv, linear, pooling and elementwise layers
    /// (1 = this thread only). While a run is in progress the other
    /// `n - 1` workers spin waiting for work, as ONNX Runtime's intra-op
    /// threads do by default: a sleeping worker took over 300 us to wake
    /// on the machine this was measured on, longer than most layers. See
    /// [`Session::set_spinning`].
    #[cfg(feature = "std")]
    pub fn set_threads(&mut self, n: usize) -> Result<()> {
        self.pool = if n <= 1 {
            None
        } else {
            Some(Threads::new(n).map_err(|e| Error::Os(format!("{e}")))?)
        };
        Ok(())
    }

    /// Let the workers of [`Session::set_threads`] sleep between layers
    /// instead of spinning through a run (`on = false`): less CPU time
    /// burnt on a device that has other work, at the cost of a wake-up
    /// per split layer (ResNet-18 int8 on 2 threads here: 1.54x against 1
    /// thread instead of 1.8x). Spinning is on by default; it applies from
    /// the next run, until the next `set_threads`.
    #[cfg(feature = "std")]
    pub fn set_spinning(&mut self, on: bool) {
        if let Some(th) = self.pool.as_mut() {
            th.spin = on;
        }
    }

    /// The model.
    pub fn model(&self) -> &Model<'m> {
        self.model
    }

    /// Derived parameters (read-only).
    pub fn prepared(&self) -> &Prepared {
        &self.prepared
    }

    /// Replace the derived parameters (for example after new normalization
    /// parameters), between runs. Detaches the session from shared
    /// parameters.
    pub fn set_prepared(&mut self, p: Prepared) {
        self.set_prepared_arc(Arc::new(p));
    }

    /// Use parameters shared with other sessions (no copy), between runs.
    /// Detaches the session from [`SharedParams`](crate::adapt::SharedParams).
    pub fn set_prepared_arc(&mut self, p: Arc<Prepared>) {
        #[cfg(feature = "std")]
        {
            self.shared = None;
        }
        self.prepared = p;
    }

    /// Mutable access to derived parameters (copied first if shared).
    /// Detaches the session from shared parameters.
    pub fn prepared_mut(&mut self) -> &mut Prepared {
        #[cfg(feature = "std")]
        {
            self.shared = None;
        }
        Arc::make_mut(&mut self.prepared)
    }

    /// Follow `shared`: every run first picks up its current parameters
    /// (one atomic load; a mutex only to clone the `Arc` when they changed).
    /// Fails if they belong to another model.
    #[cfg(feature = "std")]
    pub fn set_shared(&mut self, shared: Arc<crate::adapt::SharedParams>) -> Result<()> {
        if shared.fingerprint() != self.model.fingerprint() {
            return Err(Error::Patch(
                "shared parameters belong to another model".into(),
            ));
        }
        let (p, gen) = shared.load();
        self.prepared = p;
        self.shared = Some((shared, gen));
        Ok(())
    }

    /// Pick up the shared parameters now if they changed (done by every
    /// run); true if they did.
    #[cfg(feature = "std")]
    pub fn refresh(&mut self) -> bool {
        if let Some((sh, gen)) = &mut self.shared {
            if sh.generation() != *gen {
                let (p, g) = sh.load();
                *gen = g;
                // The old Arc is dropped here, between runs.
                self.prepared = p;
                return true;
            }
        }
        false
    }

    fn arena_mut(&mut self) -> &mut [u8] {
        self.arena.bytes(self.model.arena_bytes())
    }

    /// Run the model: `inputs[i]` holds graph input `i` (f32, its exact
    /// element count), `outputs[i]` receives graph output `i`.
    pub fn run(&mut self, inputs: &[&[f32]], outputs: &mut [&mut [f32]]) -> Result<()> {
        self.run_observed(inputs, outputs, None)
    }

    /// [`Session::run`], calling `observer` after every node.
    pub fn run_observed(
        &mut self,
        inputs: &[&[f32]],
        outputs: &mut [&mut [f32]],
        observer: Option<Observer<'_>>,
    ) -> Result<()> {
        let model = self.model;
        let g = model.graph();
        if inputs.len() != g.inputs.len() || outputs.len() != g.outputs.len() {
            return Err(Error::Io(format!(
                "the model has {} input(s) and {} output(s); {} and {} given",
                g.inputs.len(),
                g.outputs.len(),
                inputs.len(),
                outputs.len()
            )));
        }
        for (k, (&v, x)) in g.inputs.iter().zip(inputs).enumerate() {
            if x.len() != g.values[v].numel() {
                return Err(Error::Io(format!(
                    "input {k} has {} values, expected {}",
                    x.len(),
                    g.values[v].numel()
                )));
            }
        }
        for (k, (&v, y)) in g.outputs.iter().zip(outputs.iter()).enumerate() {
            if y.len() != g.values[v].numel() {
                return Err(Error::Io(format!(
                    "output {k} has {} values, expected {}",
                    y.len(),
                    g.values[v].numel()
                )));
            }
        }
        #[cfg(feature = "std")]
        self.refresh();
        #[cfg(feature = "std")]
        {
            let mut pool = self.pool.take();
            let r = match pool.as_mut() {
                Some(th) if th.spin && th.drive => crate::parallel::drive(th, |th| {
                    self.run_nodes(inputs, outputs, observer, Some(th))
                }),
                th => self.run_nodes(inputs, outputs, observer, th),
            };
            self.pool = pool;
            r
        }
        #[cfg(not(feature = "std"))]
        self.run_nodes(inputs, outputs, observer, None)
    }

    /// The nodes of one run, in order, on this thread; conv, linear,
    /// pooling and elementwise layers split across `pool` when it is given.
    fn run_nodes(
        &mut self,
        inputs: &[&[f32]],
        outputs: &mut [&mut [f32]],
        mut observer: Option<Observer<'_>>,
        mut pool: Option<&mut Threads>,
    ) -> Result<()> {
        let model = self.model;
        let g = model.graph();
        let plan = model.plan();
        let range = |v: usize| {
            let val = &g.values[v];
            plan.offsets[v]..plan.offsets[v] + val.numel() * val.dtype.size()
        };
        for (&v, x) in g.inputs.iter().zip(inputs) {
            if !quantized_only(g, v) {
                let r = range(v);
                f32s_mut(&mut self.arena_mut()[r])?.copy_from_slice(x);
            }
        }
        for i in 0..g.nodes.len() {
            self.exec_node(i, &range, inputs, pool.as_deref_mut())?;
            if let Some(obs) = observer.as_mut() {
                let node = &g.nodes[i];
                let val = &g.values[node.output];
                let bytes = &self.arena_mut()[range(node.output)];
                match val.dtype {
                    DType::F32 => obs(i, ValueView::F32(f32s(bytes)?)),
                    DType::I8 => obs(i, ValueView::I8(bytemuck::cast_slice(bytes), val.scale)),
                }
            }
        }
        for (&v, y) in g.outputs.iter().zip(outputs.iter_mut()) {
            let r = range(v);
            y.copy_from_slice(f32s(&self.arena_mut()[r])?);
        }
        Ok(())
    }

    /// Run node `i`; `graph_in` are the run's inputs, which a Quantize
    /// node reads in place when they were not copied into the arena
    /// ([`quantized_only`]).
    fn exec_node(
        &mut self,
        i: usize,
        range: &dyn Fn(usize) -> Range<usize>,
        graph_in: &[&[f32]],
        mut pool: Option<&mut Threads>,
    ) -> Result<()> {
        let model = self.model;
        let g = model.graph();
        let node = &g.nodes[i];
        if matches!(node.op, Op::Reshape) {
            return Ok(()); // shares its input's storage
        }
        let out_r = range(node.output);
        let in_r: [Range<usize>; 2] = [
            node.inputs.first().map(|&v| range(v)).unwrap_or(0..0),
            node.inputs.get(1).map(|&v| range(v)).unwrap_or(0..0),
        ];
        let params = &self.prepared.params[i];
        let arena = self.arena.bytes(model.arena_bytes());
        let (lo, rest) = arena.split_at_mut(out_r.start);
        let (out, hi) = rest.split_at_mut(out_r.end - out_r.start);
        let base_hi = out_r.end;
        // Inputs never overlap the output (the planner keeps live values
        // apart), so each lies wholly below or above it.
        let input = |r: &Range<usize>| -> Result<&[u8]> {
            if r.end <= out_r.start {
                Ok(&lo[r.clone()])
            } else if r.start >= base_hi {
                Ok(&hi[r.start - base_hi..r.end - base_hi])
            } else {
                Err(Error::Graph(format!(
                    "node {i}: input overlaps output in the arena"
                )))
            }
        };
        let x0 = input(&in_r[0])?;
        let xval = node.inputs.first().map(|&v| &g.values[v]);
        let y = &g.values[node.output];
        match (&node.op, params) {
            (Op::Quantize, _) => {
                let v = node.inputs[0];
                let x = match g.inputs.iter().position(|&gi| gi == v) {
                    Some(k) if quantized_only(g, v) => graph_in[k],
                    _ => f32s(x0)?,
                };
                let s = 1.0 / y.scale;
                par_elementwise(pool.as_deref_mut(), i8s_mut(out), |at, o| {
                    shiftnn_kernels::elementwise::quantize_i8(&x[at..at + o.len()], s, o)
                })
            }
            (Op::Dequantize, _) => {
                scalar::dequantize_i8(i8s(x0), xval.map_or(1.0, |v| v.scale), f32s_mut(out)?)
            }
            (Op::Conv { weight, .. } | Op::Linear { weight, .. }, p) => {
                let geom = model
                    .conv_geom(i)
                    .ok_or_else(|| Error::Graph(format!("node {i}: no geometry")))?;
                let (m, in_len, out_len) = match node.op {
                    Op::Linear { .. } => {
                        let m = y.numel() / geom.c_out.max(1);
                        (m, geom.c_in, geom.c_out)
                    }
                    _ => (1, geom.in_len(), geom.out_len()),
                };
                // A batched linear layer: the whole batch at once, the
                // batch rows in a pixel-lane GEMM's lanes.
                let (x_len, o_len) = (m * in_len, m * out_len);
                let th = pool.as_deref_mut();
                match (model.batched_linear(i), p) {
                    (Some((_, Batched::Rows(d, f))), NodeParams::Requant(rq)) => {
                        let (x, o) = (&i8s(x0)[..x_len], &mut i8s_mut(out)[..o_len]);
                        par_planes(th, m, in_len, out_len, x, o, |rows, x, o| {
                            f(x, rows, &d, rq, o)
                        });
                        return Ok(());
                    }
                    (Some((_, Batched::Lists(l, f))), NodeParams::Requant(rq)) => {
                        let (x, o) = (&i8s(x0)[..x_len], &mut i8s_mut(out)[..o_len]);
                        par_planes(th, m, in_len, out_len, x, o, |rows, x, o| {
                            f(x, rows, &l, rq, o)
                        });
                        return Ok(());
                    }
                    (Some((_, Batched::Float(w, f))), NodeParams::Affine(ep))
                        if !self.reference =>
                    {
                        let (x, o) = (&f32s(x0)?[..x_len], &mut f32s_mut(out)?[..o_len]);
                        par_planes(th, m, in_len, out_len, x, o, |rows, x, o| {
                            f(x, rows, &w, ep, o)
                        });
                        return Ok(());
                    }
                    _ => {}
                }
                for row in 0..m {
                    let xo = row * in_len;
                    let yo = row * out_len;
                    match (g.mode, weight.kind, p) {
                        (Mode::Int8, WeightKind::Shift, NodeParams::Requant(rq))
                            if lists_gemm(model, i, &geom).is_some() =>
                        {
                            let (l, f) = lists_gemm(model, i, &geom).expect("checked");
                            let x = &i8s(x0)[xo..xo + in_len];
                            let o = &mut i8s_mut(out)[yo..yo + out_len];
                            par_conv(pool.as_deref_mut(), &geom, x, o, |geom, x, oc0, n, o| {
                                f(geom, x, &l.sub_rows(oc0, n), oc0, &rq[oc0..oc0 + n], o)
                            });
                        }
                        (Mode::Int8, WeightKind::Shift, NodeParams::Requant(rq))
                            if decoded_gemm(model, i, &geom).is_some() =>
                        {
                            let (d, f) = decoded_gemm(model, i, &geom).expect("checked");
                            let x = &i8s(x0)[xo..xo + in_len];
                            let o = &mut i8s_mut(out)[yo..yo + out_len];
                            par_conv(pool.as_deref_mut(), &geom, x, o, |geom, x, oc0, n, o| {
                                f(geom, x, &d.sub_rows(oc0, n), oc0, &rq[oc0..oc0 + n], o)
                            });
                        }
                        (Mode::Int8, WeightKind::Shift, NodeParams::Requant(rq)) => {
                            let w = model.shift_rows(i)?;
                            let x = &i8s(x0)[xo..xo + in_len];
                            let o = &mut i8s_mut(out)[yo..yo + out_len];
                            par_conv(pool.as_deref_mut(), &geom, x, o, |geom, x, oc0, n, o| {
                                dispatch::conv_shift_i8(
                                    geom,
                                    x,
                                    &w.sub_rows(oc0, n),
                                    oc0,
                                    &rq[oc0..oc0 + n],
                                    o,
                                )
                            });
                        }
                        (Mode::Int8, WeightKind::I8, NodeParams::Requant(rq)) => {
                            let w = model.tensor_i8(&weight.tensor, &[geom.c_out, geom.k()])?;
                            let x = &i8s(x0)[xo..xo + in_len];
                            let o = &mut i8s_mut(out)[yo..yo + out_len];
                            let k = geom.k();
                            par_conv(pool.as_deref_mut(), &geom, x, o, |geom, x, oc0, n, o| {
                                dispatch::conv_w8_i8(
                                    geom,
                                    x,
                                    &w[oc0 * k..(oc0 + n) * k],
                                    oc0,
                                    &rq[oc0..oc0 + n],
                                    o,
                                )
                            });
                        }
                        (Mode::Float, WeightKind::Shift, NodeParams::Affine(ep)) => {
                            let w = model.shift_rows(i)?;
                            let x = &f32s(x0)?[xo..xo + in_len];
                            let o = &mut f32s_mut(out)?[yo..yo + out_len];
                            let f = if self.reference {
                                scalar::conv_shift_f32
                            } else {
                                dispatch::conv_shift_f32
                            };
                            par_conv(pool.as_deref_mut(), &geom, x, o, |geom, x, oc0, n, o| {
                                f(geom, x, &w.sub_rows(oc0, n), oc0, &ep[oc0..oc0 + n], o)
                            });
                        }
                        (Mode::Float, WeightKind::F32, NodeParams::Affine(ep)) => {
                            let w = model.tensor_f32(&weight.tensor, &[geom.c_out, geom.k()])?;
                            let x = &f32s(x0)?[xo..xo + in_len];
                            let o = &mut f32s_mut(out)?[yo..yo + out_len];
                            let k = geom.k();
                            par_conv(pool.as_deref_mut(), &geom, x, o, |geom, x, oc0, n, o| {
                                dispatch::conv_f32(
                                    geom,
                                    x,
                                    &w[oc0 * k..(oc0 + n) * k],
                                    oc0,
                                    &ep[oc0..oc0 + n],
                                    o,
                                )
                            });
                        }
                        _ => {
                            return Err(Error::Graph(format!(
                                "node {i}: weights do not match the mode"
                            )))
                        }
                    }
                }
            }
            (Op::Norm { .. }, NodeParams::Requant(rq)) => {
                let plane = y.numel() / rq.len().max(1);
                scalar::requant_i8(i8s(x0), plane, rq, i8s_mut(out));
            }
            (Op::Norm { .. }, NodeParams::Affine(ep)) => {
                let plane = y.numel() / ep.len().max(1);
                let (x, o) = (f32s(x0)?, f32s_mut(out)?);
                for (c, e) in ep.iter().enumerate() {
                    for j in c * plane..(c + 1) * plane {
                        o[j] = e.apply(x[j]);
                    }
                }
            }
            (Op::Act { .. }, NodeParams::Lut(t)) => scalar::lut_i8(i8s(x0), t, i8s_mut(out)),
            (Op::Act { act }, NodeParams::None) => {
                for (o, &v) in f32s_mut(out)?.iter_mut().zip(f32s(x0)?) {
                    *o = act.eval(v);
                }
            }
            (Op::Add { .. }, NodeParams::Add(rq)) => {
                let (a, b) = (i8s(x0), i8s(input(&in_r[1])?));
                par_elementwise(pool.as_deref_mut(), i8s_mut(out), |at, o| {
                    let n = o.len();
                    shiftnn_kernels::elementwise::add_i8(&a[at..at + n], &b[at..at + n], rq, o)
                })
            }
            (Op::Add { act }, NodeParams::None) => {
                let x1 = f32s(input(&in_r[1])?)?;
                let (a, b) = act
                    .clamp_bounds()
                    .unwrap_or((f32::NEG_INFINITY, f32::INFINITY));
                let e = scalar::Affine {
                    scale: 1.0,
                    bias: 0.0,
                    lo: a,
                    hi: b,
                };
                for ((o, &p), &q) in f32s_mut(out)?.iter_mut().zip(f32s(x0)?).zip(x1) {
                    *o = e.apply(p + q);
                }
            }
            (Op::MaxPool { .. } | Op::AvgPool { .. } | Op::GlobalAvgPool, _) => {
                let pg = pool_geom(
                    &node.op,
                    xval.map(|v| v.shape.as_slice()).unwrap_or(&[]),
                    &y.shape,
                );
                let (ip, op) = (pg.h * pg.w, pg.out_h * pg.out_w);
                let at = |c| PoolGeom { c, ..pg };
                match (&node.op, y.dtype) {
                    (Op::MaxPool { .. }, DType::I8) => {
                        par_planes(pool, pg.c, ip, op, i8s(x0), i8s_mut(out), |c, x, o| {
                            shiftnn_kernels::pool::maxpool_i8(&at(c), x, o)
                        })
                    }
                    (Op::MaxPool { .. }, DType::F32) => {
                        par_planes(pool, pg.c, ip, op, f32s(x0)?, f32s_mut(out)?, |c, x, o| {
                            scalar::maxpool(&at(c), x, f32::NEG_INFINITY, o)
                        })
                    }
                    (_, DType::I8) => {
                        par_planes(pool, pg.c, ip, op, i8s(x0), i8s_mut(out), |c, x, o| {
                            shiftnn_kernels::pool::avgpool_i8(&at(c), x, o)
                        })
                    }
                    (_, DType::F32) => {
                        par_planes(pool, pg.c, ip, op, f32s(x0)?, f32s_mut(out)?, |c, x, o| {
                            scalar::avgpool_f32(&at(c), x, o)
                        })
                    }
                }
            }
            (Op::Concat { axis }, p) => {
                let outer: usize = y.shape[..*axis].iter().product();
                let inner: usize = y.shape[axis + 1..].iter().product();
                let esz = y.dtype.size();
                let row = y.shape[*axis] * inner * esz;
                let mut col = 0;
                for (k, &v) in node.inputs.iter().enumerate() {
                    let xv = &g.values[v];
                    let xr = input(&range(v))?;
                    let chunk = xv.shape[*axis] * inner * esz;
                    for o in 0..outer {
                        let src = &xr[o * chunk..(o + 1) * chunk];
                        let dst = &mut out[o * row + col..o * row + col + chunk];
                        match p {
                            NodeParams::Concat(rq) if xv.scale != y.scale => {
                                for (d, &s) in dst.iter_mut().zip(src) {
                                    *d = rq[k].apply(s as i8 as i32) as u8;
                                }
                            }
                            _ => dst.copy_from_slice(src),
                        }
                    }
                    col += chunk;
                }
            }
            (Op::Softmax { axis }, _) => {
                let outer: usize = y.shape[..*axis].iter().product();
                let n = y.shape[*axis];
                let inner: usize = y.shape[axis + 1..].iter().product();
                let (x, o) = (f32s(x0)?, f32s_mut(out)?);
                for a in 0..outer {
                    for b in 0..inner {
                        let idx = |j: usize| (a * n + j) * inner + b;
                        let mx = (0..n).map(|j| x[idx(j)]).fold(f32::NEG_INFINITY, f32::max);
                        let mut sum = 0f32;
                        for j in 0..n {
                            let e = libm::expf(x[idx(j)] - mx);
                            o[idx(j)] = e;
                            sum += e;
                        }
                        for j in 0..n {
                            o[idx(j)] /= sum;
                        }
                    }
                }
            }
            (op, _) => {
                return Err(Error::Graph(format!(
                    "node {i}: {} has no kernel in {:?} mode",
                    op.name(),
                    g.mode
                )))
            }
        }
        Ok(())
    }
}

fn pool_geom(op: &Op, xs: &[usize], ys: &[usize]) -> PoolGeom {
    let (kernel, stride, pads, dilation, cip) = match *op {
        Op::MaxPool {
            kernel,
            strides,
            pads,
            dilations,
        } => (kernel, strides, pads, dilations, false),
        Op::AvgPool {
            kernel,
            strides,
            pads,
            count_include_pad,
        } => (kernel, strides, pads, [1, 1], count_include_pad),
        _ => ([xs[2], xs[3]], [1, 1], [0; 4], [1, 1], false),
    };
    PoolGeom {
        c: xs[1],
        h: xs[2],
        w: xs[3],
        kh: kernel[0],
        kw: kernel[1],
        stride,
        pads,
        dilation,
        out_h: ys[2],
        out_w: ys[3],
        count_include_pad: cip,
    }
}

/// True when every reader of graph input `v` is a Quantize node: the run
/// then quantizes the caller's slice in place instead of first copying it
/// into the arena (ResNet-18: 600 KB, about 40 us of its 90 us input
/// quantize).
fn quantized_only(g: &crate::graph::Graph, v: usize) -> bool {
    g.nodes
        .iter()
        .filter(|n| n.inputs.contains(&v))
        .all(|n| matches!(n.op, Op::Quantize))
        && !g.outputs.contains(&v)
}

fn f32s(b: &[u8]) -> Result<&[f32]> {
    bytemuck::try_cast_slice(b).map_err(|_| Error::Graph("misaligned f32 activation".into()))
}
fn f32s_mut(b: &mut [u8]) -> Result<&mut [f32]> {
    bytemuck::try_cast_slice_mut(b).map_err(|_| Error::Graph("misaligned f32 activation".into()))
}
fn i8s(b: &[u8]) -> &[i8] {
    bytemuck::cast_slice(b)
}
fn i8s_mut(b: &mut [u8]) -> &mut [i8] {
    bytemuck::cast_slice_mut(b)
}

/// Node `i`'s decoded rows and the GEMM kernel that runs them, when the
/// model decoded the layer at load and the process settings still choose
/// that kernel (a family forced since falls back to the codes). The kernel
/// chosen for the whole layer runs every band of it: a band's plane may be
/// smaller than the layer's, and the kernel is exact on any geometry.
fn decoded_gemm<'m>(
    model: &'m Model,
    i: usize,
    g: &Conv2dGeom,
) -> Option<(DecodedRows<'m>, dispatch::DecFn)> {
    let d = model.decoded_rows(i)?;
    match dispatch::decoded_kernel(g)?.f {
        KernelFn::DecodedI8(f) => Some((d, f)),
        _ => None,
    }
}

/// Node `i`'s exponent lists and the multiplication-free GEMM that runs
/// them, as [`decoded_gemm`] for int8 rows.
fn lists_gemm<'m>(
    model: &'m Model,
    i: usize,
    g: &Conv2dGeom,
) -> Option<(ExpLists<'m>, dispatch::ListFn)> {
    let l = model.decoded_lists(i)?;
    match dispatch::lists_kernel(g)?.f {
        KernelFn::ListsI8(f) => Some((l, f)),
        _ => None,
    }
}
