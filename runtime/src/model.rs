//! A loaded model: the file's bytes (borrowed, mapped or owned), its graph,
//! the table of tensors inside it, and the memory plan. Loading validates
//! everything the executor later relies on, so running never meets a bad
//! index.

use crate::error::{Error, Result};
use crate::format::{self, Fnv64, TensorTable};
use crate::graph::{Act, DType, Graph, Mode, Op, WeightKind};
use crate::planner::{self, Plan};
use alloc::{format, string::String, vec, vec::Vec};
use safetensors::Dtype;
use shiftnn_kernels::gemm::{self, DecodedRows, Fix, Order};
use shiftnn_kernels::lists::{self, ExpLists};
use shiftnn_kernels::{dispatch, Bits, Conv2dGeom, PackedRows};

/// Largest activation accepted (elements), to reject absurd shapes early.
pub const MAX_VALUE_ELEMS: usize = 1 << 28;

enum Bytes<'a> {
    Borrowed(&'a [u8]),
    /// Owned copy in a `u64` buffer so that it is 8-byte aligned.
    Owned(Vec<u64>, usize),
    #[cfg(feature = "std")]
    Mapped(memmap2::Mmap),
}

impl Bytes<'_> {
    fn get(&self) -> &[u8] {
        match self {
            Bytes::Borrowed(b) => b,
            Bytes::Owned(v, n) => &bytemuck::cast_slice(v)[..*n],
            #[cfg(feature = "std")]
            Bytes::Mapped(m) => m,
        }
    }
}

/// A view of one tensor inside the model buffer.
#[derive(Clone, Copy, Debug)]
pub struct TensorRef<'a> {
    /// Element type.
    pub dtype: Dtype,
    /// Shape.
    pub shape: &'a [usize],
    /// Raw bytes, in place.
    pub bytes: &'a [u8],
}

/// Normalization parameters of one layer (`F32 [c]` each).
#[derive(Clone, Debug, PartialEq)]
pub struct NormParams {
    /// Scale.
    pub gamma: Vec<f32>,
    /// Shift.
    pub beta: Vec<f32>,
    /// Running mean.
    pub mean: Vec<f32>,
    /// Running variance.
    pub var: Vec<f32>,
}

/// A validated `.shift` model.
pub struct Model<'a> {
    bytes: Bytes<'a>,
    graph: Graph,
    table: TensorTable,
    plan: Plan,
    fingerprint: u64,
    /// Per node: its codes repacked at load for a pixel-lane GEMM.
    decoded: Vec<Option<Decoded>>,
}

/// One layer's shift codes repacked at load for a pixel-lane GEMM: the
/// one repack the runtime does, and only for the layers those kernels run
/// under the process settings at load. The cost in memory is reported by
/// [`Model::decoded_bytes`] (`inspect`, `bench`); `SHIFTNN_ISA=avx2`
/// loads without any.
enum Decoded {
    /// Int8 rows ([`gemm::decode`], `n * k` bytes): the `vpdpbusd` GEMM
    /// (`avx512/gemm-dot`) needs plain int8 weights as broadcast operands, and
    /// runs ResNet's 3x3 convs 2-3x faster than decoding the codes in its
    /// inner loop (`avx512/dot`). Chosen by [`dispatch::decoded_kernel`]
    /// and [`dispatch::decoded_linear`] (by default, `dot` allowed).
    Rows {
        w: Vec<i8>,
        corr: Vec<i32>,
        shift: Vec<u8>,
        fix_at: Vec<u32>,
        fix: Vec<Fix>,
        k: usize,
        /// Code order, or tap-major for the direct GEMM.
        order: Order,
    },
    /// Exponent lists ([`lists::decode`], `2 n k` bytes): the
    /// multiplication-free GEMM (`avx512/gemm-shift`), 4x `avx512/shift`
    /// on ResNet's 3x3 convs. Chosen by [`dispatch::lists_kernel`] (a
    /// forced `shift` or `lut` family).
    Lists {
        idx: Vec<u16>,
        at: Vec<u32>,
        rows: usize,
        k: usize,
        bits: Bits,
    },
}

/// A batched linear layer's weights and the GEMM that runs them
/// ([`Model::batched_linear`]).
pub(crate) enum Batched<'m> {
    /// Int8 rows decoded at load (`*/gemm-dot`).
    Rows(DecodedRows<'m>, dispatch::LinFn),
    /// Exponent lists regrouped at load (`avx512/gemm-shift`).
    Lists(ExpLists<'m>, dispatch::ListLinFn),
    /// The packed codes, float mode (`avx512/gemm-fexp`).
    Float(PackedRows<'m>, dispatch::F32LinFn),
}

impl Decoded {
    /// Int8 rows, checked once here: [`Model::decoded_rows`] then views
    /// them unchecked on every inference.
    fn rows(codes: &PackedRows, order: Order) -> Result<Decoded> {
        let (n, k) = (codes.rows(), codes.k());
        let (mut w, mut corr, mut shift) = (vec![0; n * order.kp(k)], vec![0; n], vec![0; n]);
        let nf = gemm::fix_count(codes, order);
        let (mut fix_at, mut fix) = (vec![0; n + 1], vec![Fix::default(); nf]);
        gemm::decode(
            codes,
            order,
            &mut w,
            &mut corr,
            &mut shift,
            &mut fix_at,
            &mut fix,
        );
        DecodedRows::new(&w, &corr, &shift, &fix_at, &fix, k, order)
            .map_err(|e| Error::Graph(format!("decoded rows of a layer: {e:?}")))?;
        Ok(Decoded::Rows {
            w,
            corr,
            shift,
            fix_at,
            fix,
            k,
            order,
        })
    }

    /// Exponent lists, checked once here: [`Model::decoded_lists`] then
    /// views them unchecked on every inference.
    fn lists(codes: &PackedRows) -> Result<Decoded> {
        let (n, k, bits) = (codes.rows(), codes.k(), codes.bits());
        let (mut idx, mut at) = (vec![0; n * k], vec![0; lists::offsets_len(codes)]);
        lists::decode(codes, &mut idx, &mut at);
        ExpLists::new(&idx, &at, n, k, bits)
            .map_err(|e| Error::Graph(format!("exponent lists of a layer: {e:?}")))?;
        Ok(Decoded::Lists {
            idx,
            at,
            rows: n,
            k,
            bits,
        })
    }

    fn bytes(&self) -> usize {
        match self {
            Decoded::Rows {
                w,
                corr,
                shift,
                fix_at,
                fix,
                ..
            } => {
                w.len()
                    + shift.len()
                    + 4 * (corr.len() + fix_at.len())
                    + core::mem::size_of::<Fix>() * fix.len()
            }
            Decoded::Lists { idx, at, .. } => 2 * idx.len() + 4 * at.len(),
        }
    }
}

impl core::fmt::Debug for Model<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Model")
            .field("mode", &self.graph.mode)
            .field("nodes", &self.graph.nodes.len())
            .field("arena_bytes", &self.plan.arena_bytes)
            .finish()
    }
}

impl<'a> Model<'a> {
    /// Use a model in place from a byte buffer (flash, `include_bytes!`, a
    /// network buffer). Float tensors need the buffer 4-byte aligned; a
    /// misaligned one is an [`Error::Misaligned`], never a bad read.
    pub fn from_bytes(bytes: &'a [u8]) -> Result<Model<'a>> {
        Self::build(Bytes::Borrowed(bytes))
    }

    /// Copy `bytes` into an aligned buffer owned by the model.
    pub fn from_vec(bytes: &[u8]) -> Result<Model<'static>> {
        let mut v = vec![0u64; bytes.len().div_ceil(8)];
        bytemuck::cast_slice_mut::<u64, u8>(&mut v)[..bytes.len()].copy_from_slice(bytes);
        Model::build(Bytes::Owned(v, bytes.len()))
    }

    /// Memory-map a `.shift` file; weights are used in place.
    #[cfg(feature = "std")]
    pub fn open(path: impl AsRef<std::path::Path>) -> Result<Model<'static>> {
        let path = path.as_ref();
        let file =
            std::fs::File::open(path).map_err(|e| Error::Os(format!("{}: {e}", path.display())))?;
        // SAFETY: the map is read-only and private to this process; the
        // model treats it as an immutable byte slice. Modifying the file
        // while mapped is outside this program's control (as for any mmap
        // reader); every access is still bounds-checked against the map's
        // length, which cannot change.
        let map = unsafe { memmap2::Mmap::map(&file) }
            .map_err(|e| Error::Os(format!("{}: {e}", path.display())))?;
        Model::build(Bytes::Mapped(map))
    }

    fn build(bytes: Bytes<'a>) -> Result<Model<'a>> {
        let (graph, table) = format::parse(bytes.get())?;
        let mut m = Model {
            bytes,
            graph,
            table,
            plan: Plan {
                offsets: vec![],
                arena_bytes: 0,
            },
            fingerprint: 0,
            decoded: vec![],
        };
        m.validate()?;
        m.plan = planner::plan(&m.graph);
        if m.plan.arena_bytes != m.graph.arena_bytes {
            return Err(Error::Graph(format!(
                "the file records an arena of {} bytes but the plan needs {}",
                m.graph.arena_bytes, m.plan.arena_bytes
            )));
        }
        m.fingerprint = m.compute_fingerprint()?;
        if !m.graph.fingerprint.is_empty()
            && m.graph.fingerprint != format!("{:016x}", m.fingerprint)
        {
            return Err(Error::Metadata(
                "weight fingerprint does not match the weights (corrupt file?)".into(),
            ));
        }
        m.decoded = m.decode_layers()?;
        Ok(m)
    }

    /// Repack the codes of every int8 layer a pixel-lane GEMM runs: int8
    /// rows for convs ([`dispatch::decoded_kernel`]) and batched linear
    /// layers ([`dispatch::decoded_linear`]), exponent lists for convs and
    /// batched linear layers of the multiplication-free one
    /// ([`dispatch::lists_kernel`], [`dispatch::lists_linear`]).
    fn decode_layers(&self) -> Result<Vec<Option<Decoded>>> {
        (0..self.graph.nodes.len())
            .map(|i| {
                let node = &self.graph.nodes[i];
                let shift_i8 = self.graph.mode == Mode::Int8
                    && node
                        .op
                        .weight()
                        .is_some_and(|w| w.kind == WeightKind::Shift);
                let (rows, lists) = match (self.conv_geom(i), &node.op) {
                    (Some(g), Op::Linear { .. }) => {
                        let m = self.linear_batch(i);
                        let rows = dispatch::decoded_linear(m, g.k(), g.c_out);
                        let lists = dispatch::lists_linear(m, g.k(), g.c_out);
                        (rows.map(|_| Order::Codes), lists.is_some())
                    }
                    (Some(g), _) => (
                        dispatch::decoded_kernel(&g).map(|k| k.decoded_order(&g)),
                        dispatch::lists_kernel(&g).is_some(),
                    ),
                    (None, _) => (None, false),
                };
                Ok(match (shift_i8, rows, lists) {
                    (true, Some(order), _) => Some(Decoded::rows(&self.shift_rows(i)?, order)?),
                    (true, None, true) => Some(Decoded::lists(&self.shift_rows(i)?)?),
                    _ => None,
                })
            })
            .collect()
    }

    /// Rows of a linear node's batch: its outputs over its output width.
    fn linear_batch(&self, i: usize) -> usize {
        let node = &self.graph.nodes[i];
        let n = self.graph.values[node.output].shape.last().copied();
        self.graph.values[node.output].numel() / n.unwrap_or(1).max(1)
    }

    /// The pixel-lane GEMM that runs linear node `i` over its whole batch
    /// under the process settings, with the weights it reads: the int8
    /// GEMMs only on codes repacked at load (settings changed since fall
    /// back to row by row), the float one on the codes as they are.
    /// `None`: the layer runs row by row on its codes.
    pub(crate) fn batched_linear(&self, i: usize) -> Option<(&'static str, Batched<'_>)> {
        let node = self.graph.nodes.get(i)?;
        let (Op::Linear { weight, .. }, Some(g)) = (&node.op, self.conv_geom(i)) else {
            return None;
        };
        let (m, k, n) = (self.linear_batch(i), g.k(), g.c_out);
        match (self.graph.mode, weight.kind) {
            (Mode::Int8, WeightKind::Shift) => {
                if let (Some(d), Some((name, f))) =
                    (self.decoded_rows(i), dispatch::decoded_linear(m, k, n))
                {
                    return Some((name, Batched::Rows(d, f)));
                }
                let l = self.decoded_lists(i)?;
                let (name, f) = dispatch::lists_linear(m, k, n)?;
                Some((name, Batched::Lists(l, f)))
            }
            (Mode::Float, WeightKind::Shift) => {
                let (name, f) = dispatch::fexp_linear(m, k, n)?;
                Some((name, Batched::Float(self.shift_rows(i).ok()?, f)))
            }
            _ => None,
        }
    }

    /// The name of the pixel-lane GEMM that runs linear node `i` over its
    /// whole batch under the process settings (`avx512/gemm-dot`,
    /// `avx512/gemm-shift`, `avx512/gemm-fexp`, ...), or `None` if it
    /// runs row by row (then the conv kernel of its op names it), for
    /// `inspect` and `bench`. A session with
    /// [`reference kernels`](crate::Session::set_reference_kernels) runs
    /// float layers row by row whatever this says.
    pub fn batched_linear_kernel(&self, i: usize) -> Option<&'static str> {
        self.batched_linear(i).map(|(name, _)| name)
    }

    /// Node `i`'s codes as decoded at load for the pixel-lane GEMM, if they
    /// were (see [`dispatch::decoded_kernel`]).
    pub fn decoded_rows(&self, i: usize) -> Option<DecodedRows<'_>> {
        match self.decoded.get(i)?.as_ref()? {
            // SAFETY: `Decoded::rows` checked these rows with
            // `DecodedRows::new` at load, and they never change afterwards.
            Decoded::Rows {
                w,
                corr,
                shift,
                fix_at,
                fix,
                k,
                order,
            } => {
                Some(unsafe { DecodedRows::new_unchecked(w, corr, shift, fix_at, fix, *k, *order) })
            }
            Decoded::Lists { .. } => None,
        }
    }

    /// Node `i`'s codes as regrouped by exponent at load for the
    /// multiplication-free GEMM, if they were (see
    /// [`dispatch::lists_kernel`]).
    pub fn decoded_lists(&self, i: usize) -> Option<ExpLists<'_>> {
        match self.decoded.get(i)?.as_ref()? {
            // SAFETY: `Decoded::lists` checked these lists with
            // `ExpLists::new` at load, and they never change afterwards.
            Decoded::Lists {
                idx,
                at,
                rows,
                k,
                bits,
            } => Some(unsafe { ExpLists::new_unchecked(idx, at, *rows, *k, *bits) }),
            Decoded::Rows { .. } => None,
        }
    }

    /// Bytes of weights decoded at load (beside the file's), over all layers.
    pub fn decoded_bytes(&self) -> usize {
        self.decoded.iter().flatten().map(Decoded::bytes).sum()
    }

    /// The graph.
    pub fn graph(&self) -> &Graph {
        &self.graph
    }
    /// Activation mode.
    pub fn mode(&self) -> Mode {
        self.graph.mode
    }
    /// The memory plan.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }
    /// Arena bytes needed by a session.
    pub fn arena_bytes(&self) -> usize {
        self.plan.arena_bytes
    }
    /// The whole file image.
    pub fn bytes(&self) -> &[u8] {
        self.bytes.get()
    }
    /// The tensor table.
    pub fn tensors(&self) -> &TensorTable {
        &self.table
    }
    /// Hash of the weight tensors (not the normalization parameters).
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }
    /// Elements of graph input `i` (panics if out of range).
    pub fn input_len(&self, i: usize) -> usize {
        self.graph.values[self.graph.inputs[i]].numel()
    }
    /// Elements of graph output `i` (panics if out of range).
    pub fn output_len(&self, i: usize) -> usize {
        self.graph.values[self.graph.outputs[i]].numel()
    }

    /// A tensor by name.
    pub fn tensor(&self, name: &str) -> Result<TensorRef<'_>> {
        let (dtype, shape, range) = self.table.get(name).ok_or_else(|| Error::Tensor {
            name: name.into(),
            problem: "missing".into(),
        })?;
        let bytes = self.bytes.get().get(range).ok_or_else(|| Error::Tensor {
            name: name.into(),
            problem: "data out of bounds".into(),
        })?;
        Ok(TensorRef {
            dtype,
            shape,
            bytes,
        })
    }

    fn typed(&self, name: &str, dtype: Dtype, shape: &[usize]) -> Result<&[u8]> {
        let t = self.tensor(name)?;
        if t.dtype != dtype {
            return Err(Error::Tensor {
                name: name.into(),
                problem: format!("dtype {:?}, expected {dtype:?}", t.dtype),
            });
        }
        if t.shape != shape {
            return Err(Error::Tensor {
                name: name.into(),
                problem: format!("shape {:?}, expected {shape:?}", t.shape),
            });
        }
        Ok(t.bytes)
    }

    /// An `F32` tensor of the given shape, viewed in place.
    pub fn tensor_f32(&self, name: &str, shape: &[usize]) -> Result<&[f32]> {
        let b = self.typed(name, Dtype::F32, shape)?;
        bytemuck::try_cast_slice(b).map_err(|_| Error::Misaligned {
            name: name.into(),
            align: 4,
        })
    }

    /// An `I8` tensor of the given shape.
    pub fn tensor_i8(&self, name: &str, shape: &[usize]) -> Result<&[i8]> {
        Ok(bytemuck::cast_slice(self.typed(name, Dtype::I8, shape)?))
    }

    /// A `U8` tensor of the given shape.
    pub fn tensor_u8(&self, name: &str, shape: &[usize]) -> Result<&[u8]> {
        self.typed(name, Dtype::U8, shape)
    }

    /// The normalization parameters stored in the file under `prefix`.
    pub fn norm_params(&self, prefix: &str, c: usize) -> Result<NormParams> {
        let get = |s: &str| {
            self.tensor_f32(&format!("{prefix}.{s}"), &[c])
                .map(|v| v.to_vec())
        };
        Ok(NormParams {
            gamma: get("gamma")?,
            beta: get("beta")?,
            mean: get("mean")?,
            var: get("var")?,
        })
    }

    /// Convolution geometry of node `i` (a conv node of a validated model).
    pub fn conv_geom(&self, i: usize) -> Option<Conv2dGeom> {
        let node = self.graph.nodes.get(i)?;
        let x = &self.graph.values[*node.inputs.first()?];
        let y = &self.graph.values[node.output];
        match &node.op {
            Op::Conv {
                kernel,
                strides,
                pads,
                dilations,
                groups,
                ..
            } if x.shape.len() == 4 && y.shape.len() == 4 => Some(Conv2dGeom {
                c_in: x.shape[1],
                h: x.shape[2],
                w: x.shape[3],
                c_out: y.shape[1],
                kh: kernel[0],
                kw: kernel[1],
                stride: *strides,
                pads: *pads,
                dilation: *dilations,
                groups: *groups,
            }),
            Op::Linear { .. } => {
                let k = *x.shape.last()?;
                let n = *y.shape.last()?;
                Some(Conv2dGeom::linear(k, n))
            }
            _ => None,
        }
    }

    /// The packed shift codes of a shift-weight conv/linear node.
    pub fn shift_rows(&self, i: usize) -> Result<PackedRows<'_>> {
        let node = &self.graph.nodes[i];
        let g = self
            .conv_geom(i)
            .ok_or_else(|| Error::Graph(format!("node {} has no weights", node.name)))?;
        let w = node
            .op
            .weight()
            .ok_or_else(|| Error::Graph(format!("node {} has no weights", node.name)))?;
        let bits = Bits::new(w.bits as u32).ok_or_else(|| Error::Tensor {
            name: w.tensor.clone(),
            problem: format!("{} bits per code (2..=4 supported)", w.bits),
        })?;
        let data = self.tensor_u8(&w.tensor, &[g.c_out, bits.row_bytes(g.k())])?;
        PackedRows::new(data, bits, g.c_out, g.k()).map_err(|e| Error::Tensor {
            name: w.tensor.clone(),
            problem: format!("{e:?}"),
        })
    }

    fn compute_fingerprint(&self) -> Result<u64> {
        let mut h = Fnv64::default();
        let mut names: Vec<&str> = Vec::new();
        for node in &self.graph.nodes {
            if let Some(w) = node.op.weight() {
                names.push(&w.tensor);
                names.push(&w.scale);
            }
        }
        names.sort_unstable();
        names.dedup();
        for n in names {
            h.update(n.as_bytes());
            h.update(self.tensor(n)?.bytes);
        }
        Ok(h.0)
    }

    fn validate(&self) -> Result<()> {
        let g = &self.graph;
        let nv = g.values.len();
        let gerr = |m: String| Err(Error::Graph(m));
        for v in &g.values {
            let numel = v.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
            match numel {
                Some(n) if n <= MAX_VALUE_ELEMS => {}
                _ => {
                    return Err(Error::Limit(format!(
                        "value \"{}\" has shape {:?}",
                        v.name, v.shape
                    )))
                }
            }
            if v.dtype == DType::I8 && !(v.scale.is_finite() && v.scale > 0.0) {
                return gerr(format!("int8 value \"{}\" has scale {}", v.name, v.scale));
            }
        }
        let mut produced = vec![false; nv];
        for &i in &g.inputs {
            if i >= nv {
                return gerr(format!("graph input id {i} out of range"));
            }
            if g.values[i].dtype != DType::F32 {
                return gerr(format!("graph input \"{}\" must be f32", g.values[i].name));
            }
            produced[i] = true;
        }
        for &o in &g.outputs {
            if o >= nv {
                return gerr(format!("graph output id {o} out of range"));
            }
            if g.values[o].dtype != DType::F32 {
                return gerr(format!("graph output \"{}\" must be f32", g.values[o].name));
            }
        }
        if g.inputs.is_empty() || g.outputs.is_empty() {
            return gerr("graph needs at least one input and one output".into());
        }
        for (idx, node) in g.nodes.iter().enumerate() {
            let here = |m: &str| {
                Error::Graph(format!(
                    "node {} \"{}\" ({}): {m}",
                    idx,
                    node.name,
                    node.op.name()
                ))
            };
            if node.output >= nv || node.inputs.iter().any(|&i| i >= nv) {
                return Err(here("value id out of range"));
            }
            for &i in &node.inputs {
                if !produced[i] {
                    return Err(here(&format!(
                        "input \"{}\" is not produced before this node (missing producer or cycle)",
                        g.values[i].name
                    )));
                }
            }
            if produced[node.output] {
                return Err(here(&format!(
                    "output \"{}\" is produced twice",
                    g.values[node.output].name
                )));
            }
            produced[node.output] = true;
            self.validate_node(idx).map_err(|e| match e {
                Error::Graph(m) => here(&m),
                other => other,
            })?;
        }
        for &o in &g.outputs {
            if !produced[o] {
                return gerr(format!(
                    "graph output \"{}\" is never produced",
                    g.values[o].name
                ));
            }
        }
        Ok(())
    }

    fn validate_node(&self, idx: usize) -> Result<()> {
        let g = &self.graph;
        let node = &g.nodes[idx];
        let arity = |n: usize| {
            if node.inputs.len() == n {
                Ok(())
            } else {
                Err(Error::Graph(format!(
                    "expects {n} input(s), has {}",
                    node.inputs.len()
                )))
            }
        };
        let x = |i: usize| &g.values[node.inputs[i]];
        let y = &g.values[node.output];
        let act_dtype = match g.mode {
            Mode::Float => DType::F32,
            Mode::Int8 => DType::I8,
        };
        let need = |v: &crate::graph::Value, d: DType| {
            if v.dtype == d {
                Ok(())
            } else {
                Err(Error::Graph(format!(
                    "value \"{}\" is {:?}, expected {d:?}",
                    v.name, v.dtype
                )))
            }
        };
        let same_shape = |a: &crate::graph::Value, b: &crate::graph::Value| {
            if a.shape == b.shape {
                Ok(())
            } else {
                Err(Error::Graph(format!(
                    "shapes {:?} and {:?} differ",
                    a.shape, b.shape
                )))
            }
        };
        let check_act = |act: &Act, fused: bool| -> Result<()> {
            if fused && act.clamp_bounds().is_none() {
                return Err(Error::Graph(format!("activation {act:?} cannot be fused")));
            }
            if let Act::Clip { lo, hi } = act {
                if lo.is_nan() || hi.is_nan() || lo > hi {
                    return Err(Error::Graph(format!("bad clip bounds {lo}..{hi}")));
                }
            }
            Ok(())
        };
        match &node.op {
            Op::Quantize => {
                arity(1)?;
                need(x(0), DType::F32)?;
                need(y, DType::I8)?;
                same_shape(x(0), y)?;
            }
            Op::Dequantize => {
                arity(1)?;
                need(x(0), DType::I8)?;
                need(y, DType::F32)?;
                same_shape(x(0), y)?;
            }
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
                arity(1)?;
                need(x(0), act_dtype)?;
                need(y, act_dtype)?;
                check_act(act, true)?;
                let geom = self.conv_geom(idx).ok_or_else(|| {
                    Error::Graph("conv needs 4-D [1,C,H,W] input and output".into())
                })?;
                if let Op::Conv { .. } = node.op {
                    if x(0).shape[0] != 1 || y.shape[0] != 1 {
                        return Err(Error::Graph("batch must be 1".into()));
                    }
                    geom.validate()
                        .map_err(|e| Error::Graph(format!("bad geometry {e:?}")))?;
                    if y.shape[2] != geom.out_h() || y.shape[3] != geom.out_w() {
                        return Err(Error::Graph(format!(
                            "output shape {:?} does not match geometry ({} x {})",
                            y.shape,
                            geom.out_h(),
                            geom.out_w()
                        )));
                    }
                } else {
                    let xs = &x(0).shape;
                    let ys = &y.shape;
                    if xs.is_empty()
                        || xs.len() != ys.len()
                        || xs[..xs.len() - 1] != ys[..ys.len() - 1]
                        || geom.k() == 0
                    {
                        return Err(Error::Graph(format!("linear shapes {xs:?} -> {ys:?}")));
                    }
                    geom.validate()
                        .map_err(|e| Error::Graph(format!("bad geometry {e:?}")))?;
                }
                let c = geom.c_out;
                let ok_kind = matches!(
                    (g.mode, weight.kind),
                    (_, WeightKind::Shift)
                        | (Mode::Int8, WeightKind::I8)
                        | (Mode::Float, WeightKind::F32)
                );
                if !ok_kind {
                    return Err(Error::Graph(format!(
                        "{:?} weights in {:?} mode",
                        weight.kind, g.mode
                    )));
                }
                match weight.kind {
                    WeightKind::Shift => {
                        self.shift_rows(idx)?;
                    }
                    WeightKind::I8 => {
                        self.tensor_i8(&weight.tensor, &[c, geom.k()])?;
                    }
                    WeightKind::F32 => {
                        self.tensor_f32(&weight.tensor, &[c, geom.k()])?;
                    }
                }
                self.tensor_f32(&weight.scale, &[c])?;
                if let Some(b) = bias {
                    self.tensor_f32(b, &[c])?;
                }
                if let Some(n) = norm {
                    self.norm_params(&n.prefix, c)?;
                }
            }
            Op::Norm { norm, act } => {
                arity(1)?;
                need(x(0), act_dtype)?;
                need(y, act_dtype)?;
                same_shape(x(0), y)?;
                check_act(act, true)?;
                let s = &x(0).shape;
                if s.len() < 2 || s[0] != 1 {
                    return Err(Error::Graph(format!("norm needs [1, C, ...], got {s:?}")));
                }
                self.norm_params(&norm.prefix, s[1])?;
            }
            Op::Act { act } => {
                arity(1)?;
                need(x(0), act_dtype)?;
                need(y, act_dtype)?;
                same_shape(x(0), y)?;
                check_act(act, false)?;
            }
            Op::Add { act } => {
                arity(2)?;
                for i in 0..2 {
                    need(x(i), act_dtype)?;
                    same_shape(x(i), y)?;
                }
                need(y, act_dtype)?;
                check_act(act, true)?;
            }
            Op::MaxPool {
                kernel,
                strides,
                pads,
                ..
            }
            | Op::AvgPool {
                kernel,
                strides,
                pads,
                ..
            } => {
                arity(1)?;
                need(x(0), act_dtype)?;
                need(y, act_dtype)?;
                let (xs, ys) = (&x(0).shape, &y.shape);
                if xs.len() != 4 || ys.len() != 4 || xs[..2] != ys[..2] || xs[0] != 1 {
                    return Err(Error::Graph(format!("pool shapes {xs:?} -> {ys:?}")));
                }
                let dil = match &node.op {
                    Op::MaxPool { dilations, .. } => *dilations,
                    _ => [1, 1],
                };
                if kernel.contains(&0)
                    || strides.contains(&0)
                    || dil.contains(&0)
                    || ys[2] == 0
                    || ys[3] == 0
                {
                    return Err(Error::Graph(
                        "zero kernel, stride, dilation or output size".into(),
                    ));
                }
                // Every output window must start inside the padded input.
                for d in 0..2 {
                    let start = (ys[2 + d] - 1).checked_mul(strides[d]);
                    if start.is_none_or(|s| s >= xs[2 + d] + pads[d] + pads[d + 2])
                        || pads[d] >= kernel[d] * dil[d]
                    {
                        return Err(Error::Graph(format!(
                            "pool output {ys:?} does not fit input {xs:?}"
                        )));
                    }
                }
                if x(0).dtype == DType::I8 && x(0).scale != y.scale {
                    return Err(Error::Graph("int8 pooling keeps the scale".into()));
                }
            }
            Op::GlobalAvgPool => {
                arity(1)?;
                need(x(0), act_dtype)?;
                need(y, act_dtype)?;
                let (xs, ys) = (&x(0).shape, &y.shape);
                if xs.len() != 4 || ys.as_slice() != [xs[0], xs[1], 1, 1] || xs[0] != 1 {
                    return Err(Error::Graph(format!("global pool shapes {xs:?} -> {ys:?}")));
                }
                if x(0).dtype == DType::I8 && x(0).scale != y.scale {
                    return Err(Error::Graph("int8 pooling keeps the scale".into()));
                }
            }
            Op::Reshape => {
                arity(1)?;
                if x(0).numel() != y.numel() || x(0).dtype != y.dtype || x(0).scale != y.scale {
                    return Err(Error::Graph("reshape changes size, dtype or scale".into()));
                }
            }
            Op::Concat { axis } => {
                if node.inputs.is_empty() {
                    return Err(Error::Graph("concat of nothing".into()));
                }
                need(y, act_dtype)?;
                let ys = &y.shape;
                if *axis >= ys.len() {
                    return Err(Error::Graph(format!("axis {axis} out of range")));
                }
                let mut total = 0usize;
                for i in 0..node.inputs.len() {
                    let xs = &x(i).shape;
                    need(x(i), act_dtype)?;
                    if xs.len() != ys.len() || (0..ys.len()).any(|d| d != *axis && xs[d] != ys[d]) {
                        return Err(Error::Graph(format!(
                            "concat input shape {xs:?} vs output {ys:?}"
                        )));
                    }
                    total += xs[*axis];
                }
                if total != ys[*axis] {
                    return Err(Error::Graph("concat sizes do not add up".into()));
                }
            }
            Op::Softmax { axis } => {
                arity(1)?;
                need(x(0), DType::F32)?;
                need(y, DType::F32)?;
                same_shape(x(0), y)?;
                if *axis >= y.shape.len() {
                    return Err(Error::Graph(format!("axis {axis} out of range")));
                }
            }
        }
        Ok(())
    }
}
