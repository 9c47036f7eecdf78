#!/usr/bin/env python3
"""Generate float-mode ONNX fixtures for the shiftnn ONNX importer and reference executor.

    /work/venv/bin/python python/make_onnx_fixtures.py [--out tests/fixtures/onnx]

Needs numpy, onnx and onnxruntime (no torch). For every model NAME it writes

    NAME.onnx         small model, random weights from a seed derived from NAME
    NAME.input.npy    float32 input, batch 1, fixed seed
    NAME.output.npy   onnxruntime's output for that input (float32)

plus unsupported_op.onnx (contains Resize, which shiftnn does not support), the
fmnist.input.npy / fmnist.output.npy pair (first 8 Fashion-MNIST test images through
examples/fmnist/fmnist_fp32.onnx, if that file exists) and MANIFEST.md.
Every model has exactly one graph input and one graph output.
"""
import argparse
import os
import sys
import zlib

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)


class Builder:
    """Tiny graph builder: weights as initializers (default) or as Constant nodes."""

    def __init__(self, name, opset, desc, in_shape, const_nodes=False, inits_as_inputs=False):
        self.name, self.opset, self.desc, self.in_shape = name, opset, desc, list(in_shape)
        self.rng = np.random.default_rng(zlib.crc32(name.encode()))
        self.nodes, self.inits = [], []
        self.const_nodes, self.inits_as_inputs = const_nodes, inits_as_inputs
        self.count = 0
        self.input = "input"

    def fresh(self, base):
        self.count += 1
        return f"{base}_{self.count}"

    def const(self, arr, base="w"):
        arr = np.asarray(arr)
        name = self.fresh(base)
        if self.const_nodes:
            self.nodes.append(helper.make_node("Constant", [], [name],
                                               value=numpy_helper.from_array(arr, name + "_value")))
        else:
            self.inits.append(numpy_helper.from_array(arr, name))
        return name

    def randw(self, shape, fan_in, base="w"):
        w = (self.rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32)
        return self.const(w, base)

    def op(self, op_type, inputs, n_out=1, **attrs):
        outs = [self.fresh(op_type.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, **attrs))
        return outs[0] if n_out == 1 else outs

    # common layers -------------------------------------------------------
    def conv(self, x, cin, cout, k, bias=True, group=1, **attrs):
        kh, kw = (k, k) if isinstance(k, int) else k
        w = self.randw((cout, cin // group, kh, kw), cin // group * kh * kw)
        ins = [x, w]
        if bias:
            ins.append(self.const((self.rng.standard_normal(cout) * 0.1).astype(np.float32), "b"))
        return self.op("Conv", ins, kernel_shape=[kh, kw], group=group, **attrs)

    def bn(self, x, c, **attrs):
        r = self.rng
        scale = self.const((1 + 0.2 * r.standard_normal(c)).astype(np.float32), "gamma")
        bias = self.const((0.1 * r.standard_normal(c)).astype(np.float32), "beta")
        mean = self.const((0.1 * r.standard_normal(c)).astype(np.float32), "mean")
        var = self.const((0.5 + r.random(c)).astype(np.float32), "var")
        return self.op("BatchNormalization", [x, scale, bias, mean, var], epsilon=1e-5, **attrs)

    def build(self, out):
        inp = helper.make_tensor_value_info(self.input, TensorProto.FLOAT, self.in_shape)
        outp = helper.make_tensor_value_info("output", TensorProto.FLOAT, None)
        self.nodes.append(helper.make_node("Identity", [out], ["output"]))
        inputs = [inp]
        if self.inits_as_inputs:  # IR < 4 style (old exporters): initializers listed as inputs
            inputs += [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
                       for t in self.inits]
        graph = helper.make_graph(self.nodes, self.name, inputs, [outp], self.inits)
        opsets = [helper.make_opsetid("", self.opset)]
        model = helper.make_model(graph, opset_imports=opsets, producer_name="shiftnn-fixtures")
        model.ir_version = helper.find_min_ir_version_for(opsets)
        # fill in the output's static shape (the checker wants one)
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
        otype = inferred.graph.output[0].type.tensor_type
        if otype.HasField("shape") and len(otype.shape.dim) > 0 and \
                all(d.HasField("dim_value") for d in otype.shape.dim):
            dims = [d.dim_value for d in otype.shape.dim]
        else:  # e.g. Reshape fed by a Shape->Gather->Concat subgraph: ask onnxruntime
            sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
            dims = list(sess.run(None, {self.input: np.zeros(self.in_shape, np.float32)})[0].shape)
        model.graph.output[0].CopyFrom(
            helper.make_tensor_value_info("output", TensorProto.FLOAT, dims))
        return model


def _drop_output_identity(model):
    """Builder.build() routes the result through Identity to name it "output"; fold that away
    (rename the producer's output) unless the model is about Identity."""
    g = model.graph
    last = g.node[-1]
    if last.op_type != "Identity" or len(g.node) < 2:
        return model
    src = last.input[0]
    producers = [n for n in g.node[:-1] if src in n.output]
    users = [n for n in g.node[:-1] if src in n.input]
    if len(producers) != 1 or users:
        return model
    p = producers[0]
    p.output[list(p.output).index(src)] = "output"
    del g.node[-1]
    return model


MODELS = []


def fixture(fn):
    MODELS.append(fn)
    return fn


# ---------------------------------------------------------------- Conv
@fixture
def conv_basic():
    b = Builder("conv_basic", 13, "Conv 3x3, stride 1, symmetric pads 1, with bias", [1, 3, 9, 9])
    return b, b.conv(b.input, 3, 8, 3, pads=[1, 1, 1, 1])


@fixture
def conv_group_stride_asympads():
    b = Builder("conv_group_stride_asympads", 11,
                "Conv groups=2, stride 2x1, asymmetric pads [t=0,l=1,b=2,r=1], 3x2 kernel, no bias",
                [1, 4, 10, 9])
    return b, b.conv(b.input, 4, 6, (3, 2), bias=False, group=2, strides=[2, 1], pads=[0, 1, 2, 1])


@fixture
def conv_depthwise_dilated():
    b = Builder("conv_depthwise_dilated", 13,
                "depthwise Conv (groups=C=8), dilations 2, pads 2, with bias", [1, 8, 11, 11])
    return b, b.conv(b.input, 8, 8, 3, group=8, dilations=[2, 2], pads=[2, 2, 2, 2])


@fixture
def conv_depthwise_mult():
    b = Builder("conv_depthwise_mult", 17,
                "depthwise Conv with channel multiplier 2 (groups=4, 4->8), stride 2, pads 1, no bias",
                [1, 4, 9, 9])
    return b, b.conv(b.input, 4, 8, 3, bias=False, group=4, strides=[2, 2], pads=[1, 1, 1, 1])


@fixture
def conv_autopad_same_upper():
    b = Builder("conv_autopad_same_upper", 11,
                "Conv auto_pad=SAME_UPPER, 4x4 kernel, stride 2 (odd total pad -> extra at end)",
                [1, 3, 9, 9])
    return b, b.conv(b.input, 3, 4, 4, auto_pad="SAME_UPPER", strides=[2, 2])


@fixture
def conv_autopad_same_lower():
    b = Builder("conv_autopad_same_lower", 11,
                "Conv auto_pad=SAME_LOWER, 4x4 kernel, stride 2 (odd total pad -> extra at start)",
                [1, 3, 9, 9])
    return b, b.conv(b.input, 3, 4, 4, auto_pad="SAME_LOWER", strides=[2, 2])


@fixture
def conv_autopad_valid():
    b = Builder("conv_autopad_valid", 7,
                "Conv auto_pad=VALID, 3x3 stride 2, no bias; opset 7 / IR 3 with initializers "
                "also listed in graph.input", [1, 3, 10, 10], inits_as_inputs=True)
    return b, b.conv(b.input, 3, 5, 3, bias=False, auto_pad="VALID", strides=[2, 2])


@fixture
def conv_1x1_pointwise():
    b = Builder("conv_1x1_pointwise", 21, "1x1 Conv 8->16 with bias, no explicit pads/strides attributes",
                [1, 8, 5, 5])
    return b, b.conv(b.input, 8, 16, 1)


# ---------------------------------------------------------------- Gemm / MatMul
@fixture
def gemm_transb1():
    b = Builder("gemm_transb1", 13, "Gemm transB=1, alpha=0.5, beta=2.0, C bias [N]", [1, 16])
    w = b.randw((8, 16), 16)
    c = b.const((0.1 * b.rng.standard_normal(8)).astype(np.float32), "c")
    return b, b.op("Gemm", [b.input, w, c], transB=1, alpha=0.5, beta=2.0)


@fixture
def gemm_transb0():
    b = Builder("gemm_transb0", 7, "Gemm transB=0 (B is [K,N]), C bias [1,N]; opset 7 (C required)",
                [1, 16], inits_as_inputs=True)
    w = b.randw((16, 8), 16)
    c = b.const((0.1 * b.rng.standard_normal((1, 8))).astype(np.float32), "c")
    return b, b.op("Gemm", [b.input, w, c], transB=0)


@fixture
def gemm_no_bias():
    b = Builder("gemm_no_bias", 17, "Gemm transB=1 without C input (optional since opset 11)", [1, 12])
    w = b.randw((5, 12), 12)
    return b, b.op("Gemm", [b.input, w], transB=1)


@fixture
def matmul_add():
    b = Builder("matmul_add", 13, "MatMul with constant [K,N] weight followed by Add of constant bias [N]",
                [1, 16])
    w = b.randw((16, 10), 16)
    c = b.const((0.1 * b.rng.standard_normal(10)).astype(np.float32), "bias")
    return b, b.op("Add", [b.op("MatMul", [b.input, w]), c])


# ---------------------------------------------------------------- BatchNorm / activations
@fixture
def conv_bn_relu():
    b = Builder("conv_bn_relu", 13, "Conv (no bias) -> BatchNormalization -> Relu", [1, 3, 8, 8])
    x = b.conv(b.input, 3, 8, 3, bias=False, pads=[1, 1, 1, 1])
    return b, b.op("Relu", [b.bn(x, 8)])


@fixture
def batchnorm_opset7():
    b = Builder("batchnorm_opset7", 7, "standalone BatchNormalization (opset 7, spatial=1 default) on input",
                [1, 6, 5, 5], inits_as_inputs=True)
    return b, b.bn(b.input, 6)


@fixture
def activations():
    b = Builder("activations", 13,
                "Relu, LeakyRelu(alpha=0.1), Sigmoid, HardSigmoid(alpha=0.25, beta=0.4) on the input, "
                "Concat along channels (axis=1)", [1, 3, 6, 6])
    outs = [b.op("Relu", [b.input]), b.op("LeakyRelu", [b.input], alpha=0.1),
            b.op("Sigmoid", [b.input]), b.op("HardSigmoid", [b.input], alpha=0.25, beta=0.4)]
    return b, b.op("Concat", outs, axis=1)


@fixture
def hardswish():
    b = Builder("hardswish", 14, "Conv -> HardSwish (opset 14)", [1, 3, 7, 7])
    return b, b.op("HardSwish", [b.conv(b.input, 3, 6, 3, pads=[1, 1, 1, 1])])


@fixture
def leakyrelu_default():
    b = Builder("leakyrelu_default", 11, "Conv -> LeakyRelu without alpha attribute (default 0.01)",
                [1, 3, 6, 6])
    return b, b.op("LeakyRelu", [b.conv(b.input, 3, 4, 3, pads=[1, 1, 1, 1])])


@fixture
def clip_opset11():
    b = Builder("clip_opset11", 11,
                "Clip with min/max as constant inputs (ReLU6: 0, 6) then Clip with min only "
                "(max input empty)", [1, 4, 6, 6])
    x = b.op("Mul", [b.input, b.const(np.array(4.0, np.float32), "k")])
    x = b.op("Clip", [x, b.const(np.array(0.0, np.float32), "min"), b.const(np.array(6.0, np.float32), "max")])
    return b, b.op("Clip", [x, b.const(np.array(1.5, np.float32), "min"), ""])


@fixture
def clip_opset6_attrs():
    b = Builder("clip_opset6_attrs", 7, "Clip with min/max attributes (Clip-6 style, min=-0.5, max=1.0)",
                [1, 4, 6, 6], inits_as_inputs=True)
    return b, b.op("Clip", [b.input], min=-0.5, max=1.0)


@fixture
def residual_add():
    b = Builder("residual_add", 13,
                "two Conv branches from the same input (one with BN+Relu), Add of the two "
                "activations, Relu", [1, 4, 8, 8])
    a = b.op("Relu", [b.bn(b.conv(b.input, 4, 4, 3, bias=False, pads=[1, 1, 1, 1]), 4)])
    c = b.conv(b.input, 4, 4, 1)
    return b, b.op("Relu", [b.op("Add", [a, c])])


@fixture
def mul_const():
    b = Builder("mul_const", 13, "Mul by a scalar constant (shape []), then by per-channel [1,C,1,1]",
                [1, 5, 4, 4])
    x = b.op("Mul", [b.input, b.const(np.array(0.75, np.float32), "s")])
    pc = b.const(b.rng.standard_normal((1, 5, 1, 1)).astype(np.float32), "pc")
    return b, b.op("Mul", [x, pc])


# ---------------------------------------------------------------- pooling / shape ops
@fixture
def maxpool_pads():
    b = Builder("maxpool_pads", 11, "MaxPool 3x3 stride 2 pads 1 (ResNet stem style)", [1, 4, 9, 9])
    return b, b.op("MaxPool", [b.input], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])


@fixture
def maxpool_ceil():
    b = Builder("maxpool_ceil", 17, "MaxPool 2x2 stride 2 ceil_mode=1 on 7x7 (partial last window) -> 4x4",
                [1, 3, 7, 7])
    return b, b.op("MaxPool", [b.input], kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1)


@fixture
def avgpool_exclude_pad():
    b = Builder("avgpool_exclude_pad", 11, "AveragePool 3x3 stride 2 pads 1, count_include_pad=0",
                [1, 3, 8, 8])
    return b, b.op("AveragePool", [b.input], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
                   count_include_pad=0)


@fixture
def avgpool_include_pad():
    b = Builder("avgpool_include_pad", 13,
                "AveragePool 3x3 stride 1 asymmetric pads [0,1,1,0], count_include_pad=1", [1, 3, 6, 6])
    return b, b.op("AveragePool", [b.input], kernel_shape=[3, 3], strides=[1, 1], pads=[0, 1, 1, 0],
                   count_include_pad=1)


@fixture
def gap_flatten_gemm():
    b = Builder("gap_flatten_gemm", 13, "classifier head: GlobalAveragePool -> Flatten -> Gemm(transB=1)",
                [1, 8, 5, 5])
    x = b.op("Flatten", [b.op("GlobalAveragePool", [b.input])], axis=1)
    w = b.randw((10, 8), 8)
    c = b.const((0.1 * b.rng.standard_normal(10)).astype(np.float32), "c")
    return b, b.op("Gemm", [x, w, c], transB=1)


@fixture
def reshape_const():
    b = Builder("reshape_const", 13, "Reshape with constant shape [0,-1] (0 copies the batch dim), then Relu",
                [1, 4, 3, 3])
    return b, b.op("Relu", [b.op("Reshape", [b.input, b.const(np.array([0, -1], np.int64), "shape")])])


@fixture
def squeeze_unsqueeze_opset11():
    b = Builder("squeeze_unsqueeze_opset11", 11,
                "GlobalAveragePool -> Squeeze(axes=[2,3] attribute) -> Unsqueeze(axes=[1] attribute)",
                [1, 6, 4, 4])
    x = b.op("Squeeze", [b.op("GlobalAveragePool", [b.input])], axes=[2, 3])
    return b, b.op("Unsqueeze", [x], axes=[1])


@fixture
def squeeze_unsqueeze_opset13():
    b = Builder("squeeze_unsqueeze_opset13", 13,
                "GlobalAveragePool -> Squeeze(axes input [-1,-2]) -> Unsqueeze(axes input [1])",
                [1, 6, 4, 4])
    x = b.op("Squeeze", [b.op("GlobalAveragePool", [b.input]), b.const(np.array([-1, -2], np.int64), "axes")])
    return b, b.op("Unsqueeze", [x, b.const(np.array([1], np.int64), "axes")])


@fixture
def concat_channels():
    b = Builder("concat_channels", 13, "Concat of two Conv branches (4 + 6 channels) along axis=1",
                [1, 3, 6, 6])
    a = b.conv(b.input, 3, 4, 3, pads=[1, 1, 1, 1])
    c = b.conv(b.input, 3, 6, 1, bias=False)
    return b, b.op("Concat", [a, c], axis=1)


@fixture
def softmax_opset11():
    b = Builder("softmax_opset11", 11,
                "Softmax with axis=1 on rank-3 input: opset<13 semantics, coerced to 2-D, normalises "
                "over the flattened 3x4 = 12 values", [1, 3, 4])
    return b, b.op("Softmax", [b.input], axis=1)


@fixture
def softmax_opset13():
    b = Builder("softmax_opset13", 13,
                "Softmax without axis attribute on rank-3 input: opset 13 semantics, default axis=-1, "
                "normalises each row of 4 separately", [1, 3, 4])
    return b, b.op("Softmax", [b.input])


@fixture
def identity_dropout():
    b = Builder("identity_dropout", 13,
                "Conv -> Dropout (ratio input 0.5, unused mask output; identity at inference) -> "
                "Identity -> Relu", [1, 3, 6, 6])
    x = b.conv(b.input, 3, 4, 3)
    y, _mask = b.op("Dropout", [x, b.const(np.array(0.5, np.float32), "ratio")], n_out=2)
    return b, b.op("Relu", [b.op("Identity", [y])])


@fixture
def dropout_opset7():
    b = Builder("dropout_opset7", 7, "Gemm -> Dropout(ratio=0.3 attribute) -> Relu", [1, 8],
                inits_as_inputs=True)
    w = b.randw((8, 6), 8)
    c = b.const((0.1 * b.rng.standard_normal(6)).astype(np.float32), "c")
    x = b.op("Dropout", [b.op("Gemm", [b.input, w, c])], ratio=0.3)
    return b, b.op("Relu", [x])


def _small_net(b):
    """conv-bn-relu -> maxpool -> conv-bn + shortcut add -> relu -> GAP -> flatten -> gemm."""
    x = b.op("Relu", [b.bn(b.conv(b.input, 3, 8, 3, bias=False, pads=[1, 1, 1, 1]), 8)])
    x = b.op("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2])
    y = b.bn(b.conv(x, 8, 8, 3, bias=False, pads=[1, 1, 1, 1]), 8)
    x = b.op("Relu", [b.op("Add", [x, y])])
    x = b.op("Flatten", [b.op("GlobalAveragePool", [x])])
    w = b.randw((10, 8), 8)
    c = b.const((0.1 * b.rng.standard_normal(10)).astype(np.float32), "c")
    return b.op("Gemm", [x, w, c], transB=1)


@fixture
def small_net_initializers():
    b = Builder("small_net_initializers", 13,
                "small ResNet-like net (Conv/BN/Relu/MaxPool/Add/GAP/Flatten/Gemm), weights as initializers",
                [1, 3, 8, 8])
    return b, _small_net(b)


@fixture
def small_net_constants():
    b = Builder("small_net_constants", 13,
                "same net and weights as small_net_initializers, but every weight is a Constant node",
                [1, 3, 8, 8], const_nodes=True)
    b.rng = np.random.default_rng(zlib.crc32(b"small_net_initializers"))
    return b, _small_net(b)


@fixture
def small_net_opset17():
    b = Builder("small_net_opset17", 17, "small ResNet-like net at opset 17", [1, 3, 8, 8])
    return b, _small_net(b)


@fixture
def small_net_opset21():
    b = Builder("small_net_opset21", 21, "small ResNet-like net at opset 21 (IR 10)", [1, 3, 8, 8])
    return b, _small_net(b)


def _dynamic_flatten(b, axes_as_input):
    x = b.op("Relu", [b.conv(b.input, 3, 4, 3, pads=[1, 1, 1, 1])])
    shape = b.op("Shape", [x])
    n = b.op("Gather", [shape, b.const(np.array(0, np.int64), "idx")], axis=0)
    if axes_as_input:
        n1 = b.op("Unsqueeze", [n, b.const(np.array([0], np.int64), "axes")])
    else:
        n1 = b.op("Unsqueeze", [n], axes=[0])
    tgt = b.op("Concat", [n1, b.const(np.array([-1], np.int64), "minus1")], axis=0)
    flat = b.op("Reshape", [x, tgt])
    w = b.randw((6, 4 * 5 * 5), 100)
    return b.op("Gemm", [flat, w], transB=1)


@fixture
def dynamic_flatten_opset11():
    b = Builder("dynamic_flatten_opset11", 11,
                "PyTorch-style x.view(x.size(0), -1): Shape -> Gather(0) -> Unsqueeze(axes attr) -> "
                "Concat([n, -1]) -> Reshape, then Gemm; static input so the shape subgraph must be "
                "constant-folded", [1, 3, 5, 5])
    return b, _dynamic_flatten(b, False)


@fixture
def dynamic_flatten_opset13():
    b = Builder("dynamic_flatten_opset13", 13,
                "as dynamic_flatten_opset11 with Unsqueeze axes as an input (opset 13)", [1, 3, 5, 5])
    return b, _dynamic_flatten(b, True)


# ---------------------------------------------------------------- driver
def run_ort(path, x):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    outs = sess.run(None, {sess.get_inputs()[0].name: x})
    assert len(outs) == 1
    return np.asarray(outs[0], dtype=np.float32)


def unsupported_model(out_dir):
    b = Builder("unsupported_op", 13, "", [1, 3, 4, 4])
    x = b.conv(b.input, 3, 4, 3, pads=[1, 1, 1, 1])
    scales = b.const(np.array([1, 1, 2, 2], np.float32), "scales")
    y = b.op("Resize", [x, "", scales], mode="nearest")
    model = _drop_output_identity(b.build(y))
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, os.path.join(out_dir, "unsupported_op.onnx"))


def fmnist_pair(out_dir, onnx_path, src):
    import fmnist_data
    images, labels = fmnist_data.load_split(src, "t10k")
    x = fmnist_data.normalise(images[:8])
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(onnx_path, so, providers=["CPUExecutionProvider"])
    y = sess.run(["logits"], {"input": x})[0].astype(np.float32)
    np.save(os.path.join(out_dir, "fmnist.input.npy"), x)
    np.save(os.path.join(out_dir, "fmnist.output.npy"), y)
    return x.shape, y.shape, labels[:8], y.argmax(1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(REPO, "tests/fixtures/onnx"))
    ap.add_argument("--fmnist-onnx", default=os.path.join(REPO, "examples/fmnist/fmnist_fp32.onnx"))
    ap.add_argument("--fmnist-src", default="/usr/share/datasets/fashion-mnist")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)

    rows = []
    for fn in MODELS:
        b, out = fn()
        model = b.build(out)
        if "identity" not in b.name:
            model = _drop_output_identity(model)
        onnx.checker.check_model(model, full_check=True)
        path = os.path.join(args.out, b.name + ".onnx")
        onnx.save(model, path)
        rng = np.random.default_rng(zlib.crc32(("input:" + b.name).encode()))
        x = rng.standard_normal(b.in_shape).astype(np.float32)
        y = run_ort(path, x)
        np.save(os.path.join(args.out, b.name + ".input.npy"), x)
        np.save(os.path.join(args.out, b.name + ".output.npy"), y)
        ops = sorted({n.op_type for n in model.graph.node})
        size = os.path.getsize(path)
        assert size < 50_000, (b.name, size)
        rows.append((b.name, b.opset, model.ir_version, b.desc, ", ".join(ops), list(x.shape), list(y.shape)))
        print(f"{b.name:32s} opset {b.opset:2d} in {list(x.shape)} out {list(y.shape)} {size} B")

    unsupported_model(args.out)
    fm = None
    if os.path.exists(args.fmnist_onnx):
        fm = fmnist_pair(args.out, args.fmnist_onnx, args.fmnist_src)
        print("fmnist pair: labels", fm[2].tolist(), "ort argmax", fm[3].tolist())
    else:
        print(f"warning: {args.fmnist_onnx} missing; fmnist pair not written", file=sys.stderr)

    with open(os.path.join(args.out, "MANIFEST.md"), "w") as f:
        f.write(f"""# ONNX float-mode fixtures

Generated by `python/make_onnx_fixtures.py` (numpy + onnx {onnx.__version__} + onnxruntime
{ort.__version__}; no torch):

    python3 python/make_onnx_fixtures.py --out tests/fixtures/onnx   # e.g. /work/venv/bin/python

Offline only (CI and setup just read the files). The fmnist pair depends on
`examples/fmnist/fmnist_fp32.onnx`: regenerate the fixtures whenever that model is retrained.

For each `NAME.onnx`: `NAME.input.npy` (float32, batch 1, standard normal from a seed derived
from NAME) and `NAME.output.npy` (onnxruntime CPU output, float32, graph optimisations off).
Each model has one input (`input`, static shape) and one output (`output`). Weights are random
(seed derived from NAME), scaled by 1/sqrt(fan_in). Compare float outputs with a tolerance
(e.g. abs 1e-4 + rel 1e-4): summation order differs from onnxruntime.

Models at opset 7 use IR version 3 and, like old exporters, also list every initializer in
`graph.input`; an importer must treat those as constants, not as model inputs.

| model | opset | IR | covers | ops | input | output |
|---|---|---|---|---|---|---|
""")
        for name, opset, ir, desc, ops, ish, osh in rows:
            f.write(f"| `{name}` | {opset} | {ir} | {desc} | {ops} | {ish} | {osh} |\n")
        f.write("""
## Other files

- `unsupported_op.onnx` (opset 13): Conv followed by `Resize` (nearest, scale 2), an op shiftnn
  does not support: the importer must return an error naming the op (`Resize`), not panic.
  No input/output pair.
""")
        if fm is not None:
            f.write(f"""- `fmnist.input.npy` {list(fm[0])} / `fmnist.output.npy` {list(fm[1])}: the first 8
  Fashion-MNIST test images (normalised `(v/255 - 0.2860)/0.3530`) and the logits from
  onnxruntime for `examples/fmnist/fmnist_fp32.onnx` (not copied here). Labels
  {fm[2].tolist()}; ORT argmax {fm[3].tolist()}.
""")
    total = sum(os.path.getsize(os.path.join(args.out, p)) for p in os.listdir(args.out))
    print(f"{len(rows)} models; total fixture size {total} bytes")


if __name__ == "__main__":
    main()
