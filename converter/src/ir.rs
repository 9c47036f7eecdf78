//! The converter's float graph: what ONNX import produces and what
//! quantization lowers into a `.shift` model. Static shapes, batch 1,
//! topologically sorted, constants folded, no Identity/Dropout left.
//!
//! Activation functions stay separate nodes here; lowering fuses them into
//! the producer where it can.

use std::collections::BTreeMap;

/// A dense float tensor (weights, biases, normalization parameters).
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    /// Dimensions, outermost first.
    pub shape: Vec<usize>,
    /// Row-major values; `data.len()` is the product of `shape`.
    pub data: Vec<f32>,
}

impl Tensor {
    /// A tensor from its parts; panics if the sizes disagree (a bug, not
    /// bad input: importers check before building).
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Tensor {
        assert_eq!(shape.iter().product::<usize>(), data.len(), "tensor size");
        Tensor { shape, data }
    }
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.data.len()
    }
    /// True if it has no elements.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

/// 2-D window attributes shared by Conv and the pools.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// Kernel (h, w).
    pub kernel: [usize; 2],
    /// Strides (h, w).
    pub strides: [usize; 2],
    /// Explicit pads top, left, bottom, right (auto_pad already resolved).
    pub pads: [usize; 4],
    /// Dilations (h, w).
    pub dilations: [usize; 2],
}

/// One operator, with its constant operands inline.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// 2-D convolution. `weight` is `[c_out, c_in/groups, kh, kw]`.
    Conv {
        weight: Tensor,
        bias: Option<Vec<f32>>,
        window: Window,
        groups: usize,
    },
    /// Fully connected: `y = x W^T + b`, `weight` is `[n_out, k_in]` (Gemm's
    /// alpha/beta/transA/transB and MatMul+Add already folded in). Input is
    /// `[1, k]` (or `[m, k]`).
    Linear {
        weight: Tensor,
        bias: Option<Vec<f32>>,
    },
    /// Per-channel (axis 1) BatchNormalization in inference form.
    BatchNorm {
        gamma: Vec<f32>,
        beta: Vec<f32>,
        mean: Vec<f32>,
        var: Vec<f32>,
        eps: f32,
    },
    /// `y = x * scale[c] + bias[c]` per channel (axis 1), or with one value
    /// broadcast to all: Mul/Add/Sub/Div by a constant.
    ChannelAffine { scale: Vec<f32>, bias: Vec<f32> },
    /// max(x, 0).
    Relu,
    /// clamp(x, min, max) (Clip, ReLU6).
    Clip { min: f32, max: f32 },
    /// x if x >= 0 else alpha x.
    LeakyRelu { alpha: f32 },
    /// 1 / (1 + e^-x).
    Sigmoid,
    /// max(0, min(1, alpha x + beta)).
    HardSigmoid { alpha: f32, beta: f32 },
    /// x * HardSigmoid(x) with alpha 1/6, beta 0.5.
    HardSwish,
    /// Elementwise sum of two activations of the same shape.
    Add,
    /// Max pooling.
    MaxPool { window: Window, ceil_mode: bool },
    /// Average pooling.
    AveragePool {
        window: Window,
        ceil_mode: bool,
        count_include_pad: bool,
    },
    /// Mean over H and W, keeping `[1, C, 1, 1]`.
    GlobalAveragePool,
    /// Reshape/Flatten/Squeeze/Unsqueeze: same data, new static shape.
    Reshape { shape: Vec<usize> },
    /// Concatenation of all inputs along `axis` (non-negative).
    Concat { axis: usize },
    /// Softmax along `axis` (non-negative; opset < 13 "coerce to 2-D"
    /// semantics already rewritten as a Reshape around it where needed).
    Softmax { axis: usize },
}

impl Op {
    /// Short operator name for reports.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Conv { .. } => "Conv",
            Op::Linear { .. } => "Linear",
            Op::BatchNorm { .. } => "BatchNorm",
            Op::ChannelAffine { .. } => "ChannelAffine",
            Op::Relu => "Relu",
            Op::Clip { .. } => "Clip",
            Op::LeakyRelu { .. } => "LeakyRelu",
            Op::Sigmoid => "Sigmoid",
            Op::HardSigmoid { .. } => "HardSigmoid",
            Op::HardSwish => "HardSwish",
            Op::Add => "Add",
            Op::MaxPool { .. } => "MaxPool",
            Op::AveragePool { .. } => "AveragePool",
            Op::GlobalAveragePool => "GlobalAveragePool",
            Op::Reshape { .. } => "Reshape",
            Op::Concat { .. } => "Concat",
            Op::Softmax { .. } => "Softmax",
        }
    }
}

/// One node: dynamic inputs (activation names) and one output.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    /// The ONNX node name (or a generated unique one), used in reports and
    /// `--keep`.
    pub name: String,
    /// The operator and its constants.
    pub op: Op,
    /// Names of the activation inputs (Add and Concat have several).
    pub inputs: Vec<String>,
    /// Name of the output activation.
    pub output: String,
}

/// A whole float model.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Graph {
    /// Graph inputs with their static shapes (batch set to 1).
    pub inputs: Vec<(String, Vec<usize>)>,
    /// Graph output names.
    pub outputs: Vec<String>,
    /// Nodes in topological order.
    pub nodes: Vec<Node>,
    /// Static shape of every activation (inputs and node outputs).
    pub shapes: BTreeMap<String, Vec<usize>>,
}
