//! Write a `.shift` container: safetensors with 64-byte aligned tensors.

use super::{reader::is_reserved, ALIGN, META_KEY, PAD_PREFIX};
use crate::error::{Error, Result};
use crate::graph::Graph;
use alloc::{borrow::Cow, format, string::String, vec::Vec};
use safetensors::Dtype;

/// One tensor to write: its name, dtype, shape and little-endian bytes.
#[derive(Clone, Debug)]
pub struct TensorData<'a> {
    /// Name (must not start with `__pad.`).
    pub name: String,
    /// Element type.
    pub dtype: Dtype,
    /// Shape.
    pub shape: Vec<usize>,
    /// Raw little-endian bytes.
    pub data: Cow<'a, [u8]>,
}

fn dtype_name(d: Dtype) -> Result<&'static str> {
    Ok(match d {
        Dtype::U8 => "U8",
        Dtype::I8 => "I8",
        Dtype::F32 => "F32",
        Dtype::I32 => "I32",
        Dtype::F16 => "F16",
        other => {
            return Err(Error::Container(format!(
                "dtype {other:?} is not written by shiftnn"
            )))
        }
    })
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

/// Serialize `graph` and `tensors` into a `.shift` file image.
pub fn write(graph: &Graph, tensors: &[TensorData]) -> Result<Vec<u8>> {
    let graph_json = serde_json::to_string(graph).map_err(|e| Error::Metadata(format!("{e}")))?;
    for t in tensors {
        if is_reserved(&t.name) {
            return Err(Error::Tensor {
                name: t.name.clone(),
                problem: "reserved name".into(),
            });
        }
        let numel: usize = t.shape.iter().product();
        if numel * t.dtype.bitsize() / 8 != t.data.len() {
            return Err(Error::Tensor {
                name: t.name.clone(),
                problem: "byte length does not match shape".into(),
            });
        }
    }
    // The header length decides where data starts, and padding entries
    // change the header length, so iterate: lay out with a guess of the
    // header size, then grow the guess until the header fits.
    let mut header_guess = 256 + graph_json.len() + tensors.len() * 96;
    loop {
        let data_start = (8 + header_guess).next_multiple_of(ALIGN);
        let mut entries: Vec<String> = Vec::new();
        let mut layout: Vec<(usize, Option<usize>)> = Vec::new(); // (offset, tensor index or pad)
        let mut off = 0usize;
        let mut pad_id = 0;
        for (i, t) in tensors.iter().enumerate() {
            let aligned = (data_start + off).next_multiple_of(ALIGN) - data_start;
            if aligned != off {
                let len = aligned - off;
                entries.push(format!(
                    "{}:{{\"dtype\":\"U8\",\"shape\":[{len}],\"data_offsets\":[{off},{aligned}]}}",
                    json_str(&format!("{PAD_PREFIX}{pad_id}"))
                ));
                pad_id += 1;
                layout.push((off, None));
                off = aligned;
            }
            let end = off + t.data.len();
            let shape: Vec<String> = t.shape.iter().map(|d| format!("{d}")).collect();
            entries.push(format!(
                "{}:{{\"dtype\":\"{}\",\"shape\":[{}],\"data_offsets\":[{off},{end}]}}",
                json_str(&t.name),
                dtype_name(t.dtype)?,
                shape.join(",")
            ));
            layout.push((off, Some(i)));
            off = end;
        }
        let mut header = format!(
            "{{\"__metadata__\":{{{}:{}}}{}{}}}",
            json_str(META_KEY),
            json_str(&graph_json),
            if entries.is_empty() { "" } else { "," },
            entries.join(",")
        );
        let room = data_start - 8;
        if header.len() > room {
            header_guess = header.len() + 64;
            continue;
        }
        // Pad the header with spaces (valid JSON whitespace) up to the data.
        header.extend(core::iter::repeat_n(' ', room - header.len()));
        let mut out = Vec::with_capacity(data_start + off);
        out.extend_from_slice(&(room as u64).to_le_bytes());
        out.extend_from_slice(header.as_bytes());
        for (o, idx) in layout {
            debug_assert_eq!(out.len(), data_start + o);
            match idx {
                Some(i) => out.extend_from_slice(&tensors[i].data),
                None => out.resize((data_start + o).next_multiple_of(ALIGN), 0),
            }
        }
        return Ok(out);
    }
}
