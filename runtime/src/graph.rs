//! The graph stored in a `.shift` file's `__metadata__` (JSON under the key
//! [`crate::format::META_KEY`]): values (activations) with static shapes,
//! dtypes and int8 scales, and nodes in topological order. Weights and
//! normalization parameters are named safetensors tensors, referenced by
//! name, never copied into the graph.

use alloc::{string::String, vec::Vec};
use serde::{Deserialize, Serialize};

/// Activation arithmetic of a model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// f32 activations, weights applied by exponent add.
    Float,
    /// int8 activations (one scale per tensor, zero point 0), exact
    /// shift-accumulate, integer requantization.
    Int8,
}

/// Element type of an activation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    /// 32-bit float.
    F32,
    /// Signed 8-bit integer with the value's `scale`.
    I8,
}

impl DType {
    /// Bytes per element.
    pub const fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::I8 => 1,
        }
    }
}

/// An activation tensor.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Value {
    /// Name (the ONNX tensor name it came from).
    pub name: String,
    /// Static shape, batch 1.
    pub shape: Vec<usize>,
    /// Element type.
    pub dtype: DType,
    /// Real value of one int8 step (`x = q * scale`); 0 for f32 values.
    #[serde(default)]
    pub scale: f32,
}

impl Value {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Activation fused into a producer's epilogue, or run on its own.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Act {
    /// Identity.
    #[default]
    None,
    /// max(x, 0).
    Relu,
    /// clamp(x, lo, hi) (ReLU6 is 0..6).
    Clip {
        /// Lower bound.
        lo: f32,
        /// Upper bound.
        hi: f32,
    },
    /// x >= 0 ? x : alpha x.
    LeakyRelu {
        /// Negative slope.
        alpha: f32,
    },
    /// Logistic sigmoid.
    Sigmoid,
    /// max(0, min(1, alpha x + beta)).
    HardSigmoid {
        /// Slope.
        alpha: f32,
        /// Offset.
        beta: f32,
    },
    /// x * relu6(x + 3) / 6.
    HardSwish,
}

impl Act {
    /// The bounds if this activation is a clamp (fusable into an epilogue).
    pub fn clamp_bounds(&self) -> Option<(f32, f32)> {
        match *self {
            Act::None => Some((f32::NEG_INFINITY, f32::INFINITY)),
            Act::Relu => Some((0.0, f32::INFINITY)),
            Act::Clip { lo, hi } => Some((lo, hi)),
            _ => None,
        }
    }

    /// Evaluate in f32 (float mode, and int8 lookup tables at load). Uses
    /// `libm` so tables are the same on every target.
    pub fn eval(&self, x: f32) -> f32 {
        match *self {
            Act::None => x,
            Act::Relu => {
                if x > 0.0 {
                    x
                } else {
                    0.0
                }
            }
            Act::Clip { lo, hi } => {
                if x < lo {
                    lo
                } else if x > hi {
                    hi
                } else {
                    x
                }
            }
            Act::LeakyRelu { alpha } => {
                if x >= 0.0 {
                    x
                } else {
                    alpha * x
                }
            }
            Act::Sigmoid => 1.0 / (1.0 + libm::expf(-x)),
            Act::HardSigmoid { alpha, beta } => (alpha * x + beta).clamp(0.0, 1.0),
            Act::HardSwish => x * (x / 6.0 + 0.5).clamp(0.0, 1.0),
        }
    }
}

/// How a layer's weights are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WeightKind {
    /// Packed zero-free sign/power-of-two codes (`U8 [c_out, row_bytes]`).
    Shift,
    /// int8 per-channel (`I8 [c_out, k]`), kept layers in int8 mode.
    I8,
    /// f32 (`F32 [c_out, k]`), kept layers in float mode.
    F32,
}

/// A layer's weights: the tensor with the values, and the per-output-channel
/// scale that multiplies them (`w_real = scale[c] * w_stored`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WeightRef {
    /// Storage kind.
    pub kind: WeightKind,
    /// Bits per code (shift weights only).
    #[serde(default)]
    pub bits: u8,
    /// Name of the weight tensor.
    pub tensor: String,
    /// Name of the `F32 [c_out]` channel-scale tensor.
    pub scale: String,
}

/// A normalization layer whose affine parameters live in four named tensors
/// `{prefix}.gamma`, `.beta`, `.mean`, `.var` (`F32 [c]`). Adaptation
/// replaces them; they are never folded into weights in the file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NormRef {
    /// Tensor name prefix.
    pub prefix: String,
    /// Variance epsilon.
    pub eps: f32,
}

/// One operator.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// f32 input to int8 at the output value's scale.
    Quantize,
    /// int8 to f32.
    Dequantize,
    /// 2-D convolution (NCHW) with an optional bias, normalization and
    /// fused clamp activation.
    Conv {
        /// Kernel (h, w).
        kernel: [usize; 2],
        /// Strides (h, w).
        strides: [usize; 2],
        /// Pads top, left, bottom, right.
        pads: [usize; 4],
        /// Dilations (h, w).
        dilations: [usize; 2],
        /// Groups.
        groups: usize,
        /// Weights.
        weight: WeightRef,
        /// Optional `F32 [c_out]` bias tensor name.
        #[serde(default)]
        bias: Option<String>,
        /// Optional BatchNorm folded at load time.
        #[serde(default)]
        norm: Option<NormRef>,
        /// Fused clamp activation.
        #[serde(default)]
        act: Act,
    },
    /// Fully connected over the last axis: `[m, k] -> [m, n]`.
    Linear {
        /// Weights (`n` rows of `k`).
        weight: WeightRef,
        /// Optional bias tensor name.
        #[serde(default)]
        bias: Option<String>,
        /// Optional normalization (BatchNorm1d).
        #[serde(default)]
        norm: Option<NormRef>,
        /// Fused clamp activation.
        #[serde(default)]
        act: Act,
    },
    /// Standalone per-channel normalization / channel affine (axis 1).
    Norm {
        /// Parameters.
        norm: NormRef,
        /// Fused clamp activation.
        #[serde(default)]
        act: Act,
    },
    /// Standalone elementwise activation (a lookup table in int8 mode).
    Act {
        /// The function.
        act: Act,
    },
    /// Elementwise sum of two values of one shape, with fused clamp.
    Add {
        /// Fused clamp activation.
        #[serde(default)]
        act: Act,
    },
    /// Max pooling (int8: same scale in and out).
    MaxPool {
        /// Window (h, w).
        kernel: [usize; 2],
        /// Strides.
        strides: [usize; 2],
        /// Pads top, left, bottom, right.
        pads: [usize; 4],
        /// Dilations.
        dilations: [usize; 2],
    },
    /// Average pooling (int8: same scale in and out).
    AvgPool {
        /// Window (h, w).
        kernel: [usize; 2],
        /// Strides.
        strides: [usize; 2],
        /// Pads top, left, bottom, right.
        pads: [usize; 4],
        /// Divide by the padded window size.
        count_include_pad: bool,
    },
    /// Mean over H, W.
    GlobalAvgPool,
    /// Same bytes, new shape (the output shares the input's storage).
    Reshape,
    /// Concatenation along `axis`.
    Concat {
        /// Axis.
        axis: usize,
    },
    /// Softmax along `axis` (f32 in and out).
    Softmax {
        /// Axis.
        axis: usize,
    },
}

impl Op {
    /// Short name for reports.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Quantize => "quantize",
            Op::Dequantize => "dequantize",
            Op::Conv { .. } => "conv",
            Op::Linear { .. } => "linear",
            Op::Norm { .. } => "norm",
            Op::Act { .. } => "act",
            Op::Add { .. } => "add",
            Op::MaxPool { .. } => "maxpool",
            Op::AvgPool { .. } => "avgpool",
            Op::GlobalAvgPool => "global_avgpool",
            Op::Reshape => "reshape",
            Op::Concat { .. } => "concat",
            Op::Softmax { .. } => "softmax",
        }
    }

    /// The weights, for conv and linear.
    pub fn weight(&self) -> Option<&WeightRef> {
        match self {
            Op::Conv { weight, .. } | Op::Linear { weight, .. } => Some(weight),
            _ => None,
        }
    }

    /// The normalization parameters this node reads, if any.
    pub fn norm(&self) -> Option<&NormRef> {
        match self {
            Op::Conv { norm, .. } | Op::Linear { norm, .. } => norm.as_ref(),
            Op::Norm { norm, .. } => Some(norm),
            _ => None,
        }
    }
}

/// A node: value ids in, one value id out.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Node {
    /// Layer name (from the source model).
    pub name: String,
    /// Operator.
    #[serde(flatten)]
    pub op: Op,
    /// Input value ids.
    pub inputs: Vec<usize>,
    /// Output value id.
    pub output: usize,
}

/// The whole graph, as stored in the file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Graph {
    /// Always [`crate::format::FORMAT_NAME`].
    pub format: String,
    /// [`crate::format::FORMAT_VERSION`].
    pub version: u32,
    /// Activation mode.
    pub mode: Mode,
    /// Activations.
    pub values: Vec<Value>,
    /// Graph input value ids (f32).
    pub inputs: Vec<usize>,
    /// Graph output value ids (f32).
    pub outputs: Vec<usize>,
    /// Nodes in execution order.
    pub nodes: Vec<Node>,
    /// Arena bytes of the plan, recorded at conversion so firmware can
    /// declare a buffer of exactly this size; checked at load.
    pub arena_bytes: usize,
    /// Hash of the weight tensors (FNV-1a 64, hex): patches name the model
    /// they were made for.
    #[serde(default)]
    pub fingerprint: String,
}
