//! The runtime's error type: every malformed file, graph or call becomes one
//! of these, with enough context to name the problem.

use alloc::string::String;
use core::fmt;

/// Everything that can go wrong when loading or running a model.
#[derive(Debug, Clone, PartialEq)]
pub enum Error {
    /// The container is not a valid safetensors file (truncated, bad header,
    /// overlapping or out-of-range offsets, ...).
    Container(String),
    /// The `__metadata__` graph is missing, unreadable or from another
    /// format version.
    Metadata(String),
    /// A tensor the graph needs is missing, or has the wrong dtype or shape.
    Tensor {
        /// Tensor name.
        name: String,
        /// What is wrong with it.
        problem: String,
    },
    /// A tensor's data does not start on the boundary its kernels need.
    Misaligned {
        /// Tensor name.
        name: String,
        /// Required alignment in bytes.
        align: usize,
    },
    /// The graph is inconsistent (bad value id, cycle, shape mismatch, ...).
    Graph(String),
    /// A size limit was exceeded (header, tensor count, arena, ...).
    Limit(String),
    /// The caller's arena is smaller than the plan needs.
    ArenaTooSmall {
        /// Bytes the plan needs.
        needed: usize,
        /// Bytes given.
        given: usize,
    },
    /// Inputs or outputs passed to `run` do not match the model.
    Io(String),
    /// An affine-parameter update was rejected.
    Patch(String),
    /// An operating-system error (opening or mapping a file).
    Os(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Container(m) => write!(f, "invalid model container: {m}"),
            Error::Metadata(m) => write!(f, "invalid model metadata: {m}"),
            Error::Tensor { name, problem } => write!(f, "tensor \"{name}\": {problem}"),
            Error::Misaligned { name, align } => {
                write!(
                    f,
                    "tensor \"{name}\" is not {align}-byte aligned in the model buffer"
                )
            }
            Error::Graph(m) => write!(f, "invalid graph: {m}"),
            Error::Limit(m) => write!(f, "limit exceeded: {m}"),
            Error::ArenaTooSmall { needed, given } => {
                write!(
                    f,
                    "arena too small: the model needs {needed} bytes, {given} given"
                )
            }
            Error::Io(m) => write!(f, "bad inputs/outputs: {m}"),
            Error::Patch(m) => write!(f, "affine patch rejected: {m}"),
            Error::Os(m) => write!(f, "{m}"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for Error {}

/// Shorthand used across the crate.
pub type Result<T> = core::result::Result<T, Error>;
