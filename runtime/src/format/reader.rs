//! Parse and validate a `.shift` container without copying tensor data.

use super::{ALIGN, FORMAT_NAME, FORMAT_VERSION, MAX_HEADER, MAX_TENSORS, META_KEY, PAD_PREFIX};
use crate::error::{Error, Result};
use crate::graph::Graph;
use alloc::{collections::BTreeMap, format, string::String, string::ToString, vec::Vec};
use safetensors::{Dtype, SafeTensors};

/// Where each named tensor lives in the buffer: dtype, shape, and the byte
/// range relative to the start of the file.
#[derive(Clone, Debug, Default)]
pub struct TensorTable {
    entries: BTreeMap<String, (Dtype, Vec<usize>, core::ops::Range<usize>)>,
}

impl TensorTable {
    /// Look up a tensor.
    pub fn get(&self, name: &str) -> Option<(Dtype, &[usize], core::ops::Range<usize>)> {
        self.entries
            .get(name)
            .map(|(d, s, r)| (*d, s.as_slice(), r.clone()))
    }
    /// Iterate tensors in name order (padding excluded).
    pub fn iter(&self) -> impl Iterator<Item = (&str, Dtype, &[usize], core::ops::Range<usize>)> {
        self.entries
            .iter()
            .map(|(n, (d, s, r))| (n.as_str(), *d, s.as_slice(), r.clone()))
    }
    /// Number of tensors (padding excluded).
    pub fn len(&self) -> usize {
        self.entries.len()
    }
    /// True if there are none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Parse the container: returns the graph and the tensor table. Every
/// malformed input is an [`Error`]; nothing here panics or reads out of
/// bounds.
pub fn parse(bytes: &[u8]) -> Result<(Graph, TensorTable)> {
    if bytes.len() < 8 {
        return Err(Error::Container(format!(
            "file is {} bytes, shorter than the 8-byte header length",
            bytes.len()
        )));
    }
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap_or([0; 8]));
    if n > MAX_HEADER as u64 {
        return Err(Error::Limit(format!(
            "header of {n} bytes exceeds the {MAX_HEADER}-byte limit"
        )));
    }
    let (n, meta) =
        SafeTensors::read_metadata(bytes).map_err(|e| Error::Container(format!("{e:?}")))?;
    let data_start = 8 + n;
    let infos = meta.tensors();
    if infos.len() > MAX_TENSORS {
        return Err(Error::Limit(format!(
            "{} tensors exceed the limit of {MAX_TENSORS}",
            infos.len()
        )));
    }
    let mut table = TensorTable::default();
    for (name, info) in infos {
        let (s, e) = info.data_offsets;
        let start = data_start + s;
        if name.starts_with(PAD_PREFIX) {
            continue;
        }
        if start % ALIGN != 0 {
            return Err(Error::Misaligned { name, align: ALIGN });
        }
        table.entries.insert(
            name,
            (info.dtype, info.shape.clone(), start..data_start + e),
        );
    }
    let json = meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get(META_KEY))
        .ok_or_else(|| {
            Error::Metadata(format!(
                "no \"{META_KEY}\" entry in __metadata__: not a .shift file"
            ))
        })?;
    let graph: Graph = serde_json::from_str(json).map_err(|e| Error::Metadata(e.to_string()))?;
    if graph.format != FORMAT_NAME {
        return Err(Error::Metadata(format!(
            "format \"{}\" is not \"{FORMAT_NAME}\"",
            graph.format
        )));
    }
    if graph.version != FORMAT_VERSION {
        return Err(Error::Metadata(format!(
            "format version {} is not supported (this runtime reads version {FORMAT_VERSION})",
            graph.version
        )));
    }
    Ok((graph, table))
}

/// Names of padding tensors are reserved.
pub(crate) fn is_reserved(name: &str) -> bool {
    name.starts_with(PAD_PREFIX)
}
