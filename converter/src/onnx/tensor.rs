//! Constant tensors: decoding `TensorProto` (every storage form, checked
//! against its dims) and the small tensor algebra used by constant folding.

use super::proto::{data_type as dt, TensorProto};

/// Largest element count of any tensor (initializer, folded constant or
/// activation).
pub const MAX_ELEMS: usize = 1 << 31;
/// Largest element count constant folding may create from a smaller input
/// (ConstantOfShape, broadcasting): keeps hostile files from making us
/// allocate gigabytes out of a few bytes.
pub const MAX_FOLD_ELEMS: usize = 1 << 24;

/// Element storage of a constant.
#[derive(Clone, Debug, PartialEq)]
pub enum Data {
    /// Floating point (float, double, float16, bfloat16 all land here).
    F(Vec<f32>),
    /// Integers and booleans (shapes, axes, indices).
    I(Vec<i64>),
}

/// A constant tensor known at import time.
#[derive(Clone, Debug, PartialEq)]
pub struct Const {
    pub shape: Vec<usize>,
    pub data: Data,
}

/// Element count of a shape, or an error message if it overflows or
/// exceeds `limit`.
pub fn numel(shape: &[usize], limit: usize) -> Result<usize, String> {
    let mut n: usize = 1;
    for &d in shape {
        n = n
            .checked_mul(d)
            .filter(|&n| n <= limit)
            .ok_or_else(|| format!("shape {shape:?} has too many elements (limit {limit})"))?;
    }
    Ok(n)
}

/// Converts ONNX dims (i64) to a checked static shape.
pub fn dims_to_shape(dims: &[i64]) -> Result<Vec<usize>, String> {
    let mut s = Vec::with_capacity(dims.len().min(64));
    if dims.len() > 64 {
        return Err(format!("rank {} is too large", dims.len()));
    }
    for &d in dims {
        if d < 0 {
            return Err(format!("negative dimension {d} in {dims:?}"));
        }
        s.push(usize::try_from(d).map_err(|_| format!("dimension {d} too large"))?);
    }
    numel(&s, MAX_ELEMS)?;
    Ok(s)
}

impl Const {
    pub fn f(shape: Vec<usize>, data: Vec<f32>) -> Const {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        Const {
            shape,
            data: Data::F(data),
        }
    }
    pub fn i(shape: Vec<usize>, data: Vec<i64>) -> Const {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        Const {
            shape,
            data: Data::I(data),
        }
    }
    pub fn len(&self) -> usize {
        match &self.data {
            Data::F(v) => v.len(),
            Data::I(v) => v.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn is_int(&self) -> bool {
        matches!(self.data, Data::I(_))
    }
    /// Values as f32.
    pub fn to_f32(&self) -> Vec<f32> {
        match &self.data {
            Data::F(v) => v.clone(),
            Data::I(v) => v.iter().map(|&x| x as f32).collect(),
        }
    }
    /// Values as i64 (floats truncated toward zero).
    pub fn to_i64(&self) -> Vec<i64> {
        match &self.data {
            Data::I(v) => v.clone(),
            Data::F(v) => v
                .iter()
                .map(|&x| if x.is_finite() { x as i64 } else { 0 })
                .collect(),
        }
    }
    /// Picks elements by flat index into a new tensor of `shape`.
    fn gather_flat(&self, shape: Vec<usize>, idx: &[usize]) -> Const {
        match &self.data {
            Data::F(v) => Const::f(shape, idx.iter().map(|&i| v[i]).collect()),
            Data::I(v) => Const::i(shape, idx.iter().map(|&i| v[i]).collect()),
        }
    }
    /// Same data, new shape (sizes must agree; checked by callers).
    pub fn reshaped(&self, shape: Vec<usize>) -> Const {
        Const {
            shape,
            data: self.data.clone(),
        }
    }
}

/// Decodes an initializer or Constant value.
pub fn from_proto(t: &TensorProto) -> Result<Const, String> {
    if t.data_location == 1 || !t.external_data.is_empty() {
        return Err(
            "external data is not supported (store the weights inside the .onnx file)".into(),
        );
    }
    let shape = dims_to_shape(&t.dims)?;
    let n = numel(&shape, MAX_ELEMS)?;
    let raw = !t.raw_data.is_empty();
    let check_len = |got: usize| -> Result<(), String> {
        if got != n {
            Err(format!(
                "{} tensor with dims {:?} needs {n} values but holds {got}",
                dt::name(t.data_type),
                t.dims
            ))
        } else {
            Ok(())
        }
    };
    let raw_elems = |size: usize| -> Result<&[u8], String> {
        let need = n.checked_mul(size).ok_or("tensor too large")?;
        if t.raw_data.len() != need {
            return Err(format!(
                "{} tensor with dims {:?} needs {need} bytes of raw_data but has {}",
                dt::name(t.data_type),
                t.dims,
                t.raw_data.len()
            ));
        }
        Ok(&t.raw_data)
    };
    let out = match t.data_type {
        dt::FLOAT => {
            if raw {
                let b = raw_elems(4)?;
                Data::F(
                    b.chunks_exact(4)
                        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                        .collect(),
                )
            } else {
                check_len(t.float_data.len())?;
                Data::F(t.float_data.clone())
            }
        }
        dt::DOUBLE => {
            if raw {
                let b = raw_elems(8)?;
                Data::F(
                    b.chunks_exact(8)
                        .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")) as f32)
                        .collect(),
                )
            } else {
                check_len(t.double_data.len())?;
                Data::F(t.double_data.iter().map(|&x| x as f32).collect())
            }
        }
        dt::FLOAT16 | dt::BFLOAT16 => {
            let conv = |bits: u16| -> f32 {
                if t.data_type == dt::FLOAT16 {
                    half::f16::from_bits(bits).to_f32()
                } else {
                    half::bf16::from_bits(bits).to_f32()
                }
            };
            if raw {
                let b = raw_elems(2)?;
                Data::F(
                    b.chunks_exact(2)
                        .map(|c| conv(u16::from_le_bytes([c[0], c[1]])))
                        .collect(),
                )
            } else {
                check_len(t.int32_data.len())?;
                Data::F(t.int32_data.iter().map(|&x| conv(x as u16)).collect())
            }
        }
        dt::INT64 => {
            if raw {
                let b = raw_elems(8)?;
                Data::I(
                    b.chunks_exact(8)
                        .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
                        .collect(),
                )
            } else {
                check_len(t.int64_data.len())?;
                Data::I(t.int64_data.clone())
            }
        }
        dt::UINT64 => {
            if raw {
                let b = raw_elems(8)?;
                Data::I(
                    b.chunks_exact(8)
                        .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")) as i64)
                        .collect(),
                )
            } else {
                check_len(t.uint64_data.len())?;
                Data::I(t.uint64_data.iter().map(|&x| x as i64).collect())
            }
        }
        dt::INT32 | dt::UINT32 => {
            if raw {
                let b = raw_elems(4)?;
                let unsigned = t.data_type == dt::UINT32;
                Data::I(
                    b.chunks_exact(4)
                        .map(|c| {
                            let a = [c[0], c[1], c[2], c[3]];
                            if unsigned {
                                u32::from_le_bytes(a) as i64
                            } else {
                                i32::from_le_bytes(a) as i64
                            }
                        })
                        .collect(),
                )
            } else if t.data_type == dt::UINT32 {
                // uint32 values are stored in uint64_data.
                check_len(t.uint64_data.len())?;
                Data::I(t.uint64_data.iter().map(|&x| x as i64).collect())
            } else {
                check_len(t.int32_data.len())?;
                Data::I(t.int32_data.iter().map(|&x| x as i64).collect())
            }
        }
        dt::INT8 | dt::UINT8 | dt::BOOL | dt::INT16 | dt::UINT16 => {
            if raw {
                let (size, f): (usize, fn(&[u8]) -> i64) = match t.data_type {
                    dt::INT8 => (1, |c| c[0] as i8 as i64),
                    dt::UINT8 => (1, |c| c[0] as i64),
                    dt::BOOL => (1, |c| (c[0] != 0) as i64),
                    dt::INT16 => (2, |c| i16::from_le_bytes([c[0], c[1]]) as i64),
                    _ => (2, |c| u16::from_le_bytes([c[0], c[1]]) as i64),
                };
                let b = raw_elems(size)?;
                Data::I(b.chunks_exact(size).map(f).collect())
            } else {
                check_len(t.int32_data.len())?;
                Data::I(t.int32_data.iter().map(|&x| x as i64).collect())
            }
        }
        other => {
            return Err(format!(
                "tensor data type {} ({other}) is not supported",
                dt::name(other)
            ))
        }
    };
    Ok(Const { shape, data: out })
}

/// Normalizes a possibly negative axis against `rank`.
pub fn norm_axis(axis: i64, rank: usize) -> Result<usize, String> {
    let r = rank as i64;
    if axis < -r || axis >= r {
        return Err(format!("axis {axis} is out of range for rank {rank}"));
    }
    Ok(if axis < 0 {
        (axis + r) as usize
    } else {
        axis as usize
    })
}

/// Row-major strides of a shape.
pub fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

/// Numpy-style broadcast of two shapes.
pub fn broadcast_shapes(a: &[usize], b: &[usize]) -> Result<Vec<usize>, String> {
    let r = a.len().max(b.len());
    let mut out = vec![0; r];
    for i in 0..r {
        let da = if i + a.len() >= r {
            a[i + a.len() - r]
        } else {
            1
        };
        let db = if i + b.len() >= r {
            b[i + b.len() - r]
        } else {
            1
        };
        out[i] = if da == db || db == 1 {
            da
        } else if da == 1 {
            db
        } else {
            return Err(format!("shapes {a:?} and {b:?} do not broadcast"));
        };
    }
    Ok(out)
}

/// Flat indices into a tensor of shape `from` for each element of the
/// broadcast shape `to`.
pub fn broadcast_index(from: &[usize], to: &[usize]) -> Vec<usize> {
    let n: usize = to.iter().product();
    let fs = strides(from);
    let off = to.len() - from.len();
    let mut idx = Vec::with_capacity(n);
    let mut coord = vec![0usize; to.len()];
    for _ in 0..n {
        let mut f = 0;
        for (k, &c) in coord.iter().enumerate().skip(off) {
            let d = from[k - off];
            if d != 1 {
                f += c * fs[k - off];
            }
        }
        idx.push(f);
        for k in (0..to.len()).rev() {
            coord[k] += 1;
            if coord[k] < to[k] {
                break;
            }
            coord[k] = 0;
        }
    }
    idx
}

/// Elementwise binary arithmetic with broadcasting.
pub fn binary(op: &str, a: &Const, b: &Const) -> Result<Const, String> {
    let shape = broadcast_shapes(&a.shape, &b.shape)?;
    numel(&shape, MAX_FOLD_ELEMS.max(a.len()).max(b.len()))?;
    let ia = broadcast_index(&a.shape, &shape);
    let ib = broadcast_index(&b.shape, &shape);
    if a.is_int() && b.is_int() {
        let (x, y) = (a.to_i64(), b.to_i64());
        let mut out = Vec::with_capacity(ia.len());
        for (&i, &j) in ia.iter().zip(&ib) {
            let (p, q) = (x[i], y[j]);
            out.push(match op {
                "Add" => p.wrapping_add(q),
                "Sub" => p.wrapping_sub(q),
                "Mul" => p.wrapping_mul(q),
                "Div" => {
                    if q == 0 {
                        return Err("integer division by zero".into());
                    }
                    p.wrapping_div(q)
                }
                _ => return Err(format!("{op} cannot be folded")),
            });
        }
        Ok(Const::i(shape, out))
    } else {
        let (x, y) = (a.to_f32(), b.to_f32());
        let mut out = Vec::with_capacity(ia.len());
        for (&i, &j) in ia.iter().zip(&ib) {
            let (p, q) = (x[i], y[j]);
            out.push(match op {
                "Add" => p + q,
                "Sub" => p - q,
                "Mul" => p * q,
                "Div" => p / q,
                _ => return Err(format!("{op} cannot be folded")),
            });
        }
        Ok(Const::f(shape, out))
    }
}

/// Transpose with a permutation.
pub fn transpose(a: &Const, perm: &[usize]) -> Result<Const, String> {
    let r = a.shape.len();
    let mut seen = vec![false; r];
    if perm.len() != r
        || perm
            .iter()
            .any(|&p| p >= r || std::mem::replace(&mut seen[p], true))
    {
        return Err(format!("perm {perm:?} is not a permutation of rank {r}"));
    }
    let out_shape: Vec<usize> = perm.iter().map(|&p| a.shape[p]).collect();
    let is = strides(&a.shape);
    let n = a.len();
    let mut idx = Vec::with_capacity(n);
    let mut coord = vec![0usize; r];
    for _ in 0..n {
        idx.push(coord.iter().zip(perm).map(|(&c, &p)| c * is[p]).sum());
        for k in (0..r).rev() {
            coord[k] += 1;
            if coord[k] < out_shape[k] {
                break;
            }
            coord[k] = 0;
        }
    }
    Ok(a.gather_flat(out_shape, &idx))
}

/// Gather along `axis` with (possibly negative) indices.
pub fn gather(a: &Const, indices: &Const, axis: i64) -> Result<Const, String> {
    if !indices.is_int() {
        return Err("Gather indices must be integers".into());
    }
    let axis = norm_axis(axis, a.shape.len())?;
    let dim = a.shape[axis] as i64;
    let ind: Vec<usize> = indices
        .to_i64()
        .into_iter()
        .map(|i| {
            let j = if i < 0 { i + dim } else { i };
            if j < 0 || j >= dim {
                Err(format!("Gather index {i} out of range for dimension {dim}"))
            } else {
                Ok(j as usize)
            }
        })
        .collect::<Result<_, _>>()?;
    let outer: usize = a.shape[..axis].iter().product();
    let inner: usize = a.shape[axis + 1..].iter().product();
    let mut shape = a.shape[..axis].to_vec();
    shape.extend_from_slice(&indices.shape);
    shape.extend_from_slice(&a.shape[axis + 1..]);
    numel(&shape, MAX_FOLD_ELEMS.max(a.len()))?;
    let mut idx = Vec::new();
    for o in 0..outer {
        for &j in &ind {
            for i in 0..inner {
                idx.push((o * a.shape[axis] + j) * inner + i);
            }
        }
    }
    Ok(a.gather_flat(shape, &idx))
}

/// Concatenation along `axis`.
pub fn concat(parts: &[&Const], axis: i64) -> Result<Const, String> {
    let first = parts.first().ok_or("Concat needs at least one input")?;
    let r = first.shape.len();
    let axis = norm_axis(axis, r)?;
    let mut shape = first.shape.clone();
    shape[axis] = 0;
    for p in parts {
        if p.shape.len() != r
            || p.shape
                .iter()
                .enumerate()
                .any(|(k, &d)| k != axis && d != first.shape[k])
        {
            return Err(format!(
                "Concat inputs {:?} and {:?} disagree",
                first.shape, p.shape
            ));
        }
        shape[axis] += p.shape[axis];
    }
    let outer: usize = shape[..axis].iter().product();
    let any_float = parts.iter().any(|p| !p.is_int());
    let fs: Vec<Vec<f32>> = if any_float {
        parts.iter().map(|p| p.to_f32()).collect()
    } else {
        vec![]
    };
    let is: Vec<Vec<i64>> = if any_float {
        vec![]
    } else {
        parts.iter().map(|p| p.to_i64()).collect()
    };
    let mut f = Vec::new();
    let mut i = Vec::new();
    for o in 0..outer {
        for (k, p) in parts.iter().enumerate() {
            let chunk: usize = p.shape[axis..].iter().product();
            let range = o * chunk..(o + 1) * chunk;
            if any_float {
                f.extend_from_slice(&fs[k][range]);
            } else {
                i.extend_from_slice(&is[k][range]);
            }
        }
    }
    Ok(if any_float {
        Const::f(shape, f)
    } else {
        Const::i(shape, i)
    })
}

/// ONNX Slice over constants.
pub fn slice(
    a: &Const,
    starts: &[i64],
    ends: &[i64],
    axes: &[i64],
    steps: &[i64],
) -> Result<Const, String> {
    let r = a.shape.len();
    if starts.len() != ends.len() || axes.len() != starts.len() || steps.len() != starts.len() {
        return Err("Slice starts, ends, axes and steps differ in length".into());
    }
    // Per axis: start, step, count.
    let mut sel: Vec<(i64, i64, usize)> = a.shape.iter().map(|&d| (0, 1, d)).collect();
    let mut seen = vec![false; r];
    for k in 0..starts.len() {
        let ax = norm_axis(axes[k], r)?;
        if std::mem::replace(&mut seen[ax], true) {
            return Err(format!("Slice axis {} repeated", axes[k]));
        }
        let d = a.shape[ax] as i64;
        let step = steps[k];
        if step == 0 {
            return Err("Slice step 0".into());
        }
        if d == 0 {
            sel[ax] = (0, 1, 0);
            continue;
        }
        let fix = |v: i64| if v < 0 { v.saturating_add(d) } else { v };
        let (s, e) = (fix(starts[k]), fix(ends[k]));
        let (s, e) = if step > 0 {
            (s.clamp(0, d), e.clamp(0, d))
        } else {
            (s.clamp(0, d - 1), e.clamp(-1, d - 1))
        };
        // Element count, in i128 so that extreme steps cannot overflow.
        let (s128, e128, st128) = (s as i128, e as i128, step as i128);
        let count = if step > 0 && e128 > s128 {
            ((e128 - s128 - 1) / st128 + 1) as usize
        } else if step < 0 && s128 > e128 {
            ((s128 - e128 - 1) / (-st128) + 1) as usize
        } else {
            0
        };
        // A step larger than the dimension selects one element; clamp it so
        // that index arithmetic below stays small.
        let step = step.clamp(-d, d);
        sel[ax] = (s, step, count);
    }
    let shape: Vec<usize> = sel.iter().map(|s| s.2).collect();
    let n: usize = shape.iter().product();
    let is = strides(&a.shape);
    let mut idx = Vec::with_capacity(n);
    let mut coord = vec![0usize; r];
    for _ in 0..n {
        let mut f = 0i64;
        for k in 0..r {
            f += (sel[k].0 + coord[k] as i64 * sel[k].1) * is[k] as i64;
        }
        idx.push(f as usize);
        for k in (0..r).rev() {
            coord[k] += 1;
            if coord[k] < shape[k] {
                break;
            }
            coord[k] = 0;
        }
    }
    Ok(a.gather_flat(shape, &idx))
}
