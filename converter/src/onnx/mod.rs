//! ONNX import: decodes an ONNX model (opsets 7 to 21, default domain),
//! folds every constant subgraph, infers static shapes (batch 1) and lowers
//! the supported operators into the float graph IR ([`crate::ir::Graph`]).
//!
//! Every failure is an [`OnnxError`] naming the node, operator and attribute
//! at fault; hostile input never panics.

mod attrs;
mod import;
pub mod proto;
mod tensor;

use std::fmt;
use std::path::{Path, PathBuf};

use crate::ir::Graph;

/// Lowest supported default-domain opset.
pub const MIN_OPSET: i64 = 7;
/// Highest supported default-domain opset.
pub const MAX_OPSET: i64 = 21;

/// Operator types the importer handles (some only on constants, where they
/// fold away).
pub const SUPPORTED_OPS: &[&str] = &[
    "Add",
    "AveragePool",
    "BatchNormalization",
    "Cast",
    "Clip",
    "Concat",
    "Constant",
    "ConstantOfShape",
    "Conv",
    "Div",
    "Dropout",
    "Flatten",
    "Gather",
    "Gemm",
    "GlobalAveragePool",
    "HardSigmoid",
    "HardSwish",
    "Identity",
    "LeakyRelu",
    "MatMul",
    "MaxPool",
    "Mul",
    "ReduceMean",
    "Relu",
    "Reshape",
    "Shape",
    "Sigmoid",
    "Slice",
    "Softmax",
    "Squeeze",
    "Sub",
    "Transpose",
    "Unsqueeze",
];

/// Why an ONNX model could not be imported.
#[derive(Debug, thiserror::Error)]
pub enum OnnxError {
    /// The file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The bytes are not a valid ONNX protobuf.
    #[error("not a valid ONNX model (protobuf decode failed): {0}")]
    Decode(String),
    /// A model-level problem (opset, graph structure, inputs and outputs).
    #[error("{0}")]
    Model(String),
    /// An initializer or constant tensor is malformed.
    #[error("tensor \"{name}\": {msg}")]
    Tensor { name: String, msg: String },
    /// A node cannot be imported.
    #[error("node \"{node}\" ({op}): {msg}")]
    Node {
        node: String,
        op: String,
        msg: String,
    },
}

impl OnnxError {
    /// The name of the node at fault, if the error concerns one node.
    pub fn node(&self) -> Option<&str> {
        match self {
            OnnxError::Node { node, .. } => Some(node),
            _ => None,
        }
    }
}

/// What `check` found for one node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeReport {
    /// Node name (the ONNX name, or `{op_type}_{index}` if it has none).
    pub name: String,
    /// ONNX operator type.
    pub op_type: String,
    /// False if this node cannot be imported.
    pub supported: bool,
    /// Why it is unsupported, or, for a supported node that could not be
    /// checked fully (its input comes from an unsupported node), a note.
    pub reason: Option<String>,
}

/// Result of [`check`]: one entry per ONNX node, in file order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckReport {
    /// Default-domain opset version the model imports.
    pub opset: i64,
    /// ONNX IR version.
    pub ir_version: i64,
    /// Producer (e.g. "pytorch").
    pub producer: String,
    /// Every node.
    pub nodes: Vec<NodeReport>,
    /// Problems not tied to one node (e.g. a graph output that is a
    /// constant), found after all nodes were checked.
    pub graph_errors: Vec<String>,
}

impl CheckReport {
    /// True if every node is supported and no graph-level problem remains,
    /// i.e. [`load`] succeeds.
    pub fn is_ok(&self) -> bool {
        self.graph_errors.is_empty() && self.nodes.iter().all(|n| n.supported)
    }
    /// The unsupported nodes.
    pub fn unsupported(&self) -> impl Iterator<Item = &NodeReport> {
        self.nodes.iter().filter(|n| !n.supported)
    }
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "opset {}, IR version {}, producer {:?}, {} nodes",
            self.opset,
            self.ir_version,
            self.producer,
            self.nodes.len()
        )?;
        for n in &self.nodes {
            let mark = if n.supported { "ok " } else { "ERR" };
            write!(f, "{mark} {:<32} {:<20}", n.name, n.op_type)?;
            if let Some(r) = &n.reason {
                write!(f, " {r}")?;
            }
            writeln!(f)?;
        }
        for e in &self.graph_errors {
            writeln!(f, "ERR {e}")?;
        }
        let bad = self.nodes.iter().filter(|n| !n.supported).count();
        write!(f, "{} of {} nodes unsupported", bad, self.nodes.len())
    }
}

/// Imports an ONNX model from its bytes.
pub fn load(bytes: &[u8]) -> Result<Graph, OnnxError> {
    import::import(bytes, false).map(|(g, _)| g)
}

/// Imports an ONNX model from a file.
pub fn load_file(path: impl AsRef<Path>) -> Result<Graph, OnnxError> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|source| OnnxError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    load(&bytes)
}

/// Checks every node of a model without stopping at the first problem.
/// Errors only for problems that prevent looking at nodes at all (bad
/// protobuf, unsupported opset, malformed graph structure).
pub fn check(bytes: &[u8]) -> Result<CheckReport, OnnxError> {
    import::import(bytes, true).map(|(_, r)| r.expect("check mode returns a report"))
}
