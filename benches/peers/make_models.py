#!/usr/bin/env python3
"""Write the peer-benchmark models as ONNX (opset 13) with random weights.

Accuracy is irrelevant for latency, but the *activations* must look like a
trained network's: int8 calibration, ORT's static quantizer and shiftnn's
requantizers all behave differently on activations that explode or vanish
with depth. So BatchNorm is "data-driven": the model is traced in numpy on a
small batch of random inputs while it is built, and each BatchNormalization
gets the running mean and variance its conv output actually has, plus
trained-looking gamma/beta. Every post-BN tensor is then about N(beta,
gamma^2) at any depth, as in a trained ResNet.

The graphs are written with the onnx helper API rather than exported from
PyTorch: no torch/torchvision dependency, and the graph is exactly the
PyTorch export shape (Conv -> BatchNormalization -> Relu, Linear as MatMul +
Add so ORT's dynamic quantizer, which skips Gemm, handles it).

Models (name: input shape):
  resnet18     1x3x224x224   torchvision ResNet-18 topology, 1000 classes
  resnet20     1x3x32x32     CIFAR ResNet-20 (He et al.), 1x1-conv projection
                             shortcuts (option B), 10 classes
  mobilenetv2  1x3x224x224   torchvision MobileNetV2 topology (ReLU6 = Clip)
  linear_b1    1x4096        one Linear 4096x4096 with bias
  linear_b64   64x4096       the same at batch 64
  mlp4_b1      1x4096        4 x (Linear 4096x4096 + ReLU); the last has no ReLU

Usage: python make_models.py [--out DIR] [--only NAME,...] [--seed N]
"""

import argparse
import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 13
TRACE_BATCH = 4  # images traced for BN statistics (CNNs)


def _windows(x, kh, kw, stride, pad):
    """(N, C, Ho, Wo, kh, kw) view of the zero-padded input."""
    if pad:
        x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    w = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(2, 3))
    return w[:, :, ::stride, ::stride]


def np_conv(x, w, stride, pad, group):
    """Reference conv for tracing (NCHW, OIHW, no bias)."""
    o, ci, kh, kw = w.shape
    win = _windows(x, kh, kw, stride, pad)
    if group == 1:
        y = np.tensordot(win, w, axes=([1, 4, 5], [1, 2, 3]))  # N Ho Wo O
        return np.ascontiguousarray(y.transpose(0, 3, 1, 2))
    if group == x.shape[1] and ci == 1 and o == group:
        return np.einsum("nchwij,cij->nchw", win, w[:, 0], optimize=True)
    raise ValueError("only dense and depthwise convs are traced")


class Builder:
    """Builds an ONNX graph and traces it in numpy at the same time."""

    def __init__(self, name, input_shape, rng, trace_batch):
        self.name = name
        self.rng = rng
        self.nodes = []
        self.inits = []
        self.n = 0
        self.input_shape = list(input_shape)
        tshape = [trace_batch] + list(input_shape[1:])
        self.x = ("input", rng.standard_normal(tshape).astype(np.float32))

    def _id(self, prefix):
        self.n += 1
        return f"{prefix}{self.n}"

    def _const(self, name, arr):
        self.inits.append(numpy_helper.from_array(np.asarray(arr, np.float32), name))
        return name

    def conv(self, x, cout, k, stride=1, pad=None, group=1):
        name, v = x
        cin = v.shape[1]
        pad = k // 2 if pad is None else pad
        # Kaiming normal, fan_out, gain sqrt(2): torchvision's init.
        fan_out = cout * k * k // group
        w = self.rng.standard_normal((cout, cin // group, k, k)) * np.sqrt(2.0 / fan_out)
        w = w.astype(np.float32)
        nid = self._id("conv")
        out = nid + "_out"
        self.nodes.append(
            helper.make_node(
                "Conv",
                [name, self._const(nid + ".weight", w)],
                [out],
                name=nid,
                kernel_shape=[k, k],
                strides=[stride, stride],
                pads=[pad] * 4,
                group=group,
            )
        )
        return out, np_conv(v, w, stride, pad, group).astype(np.float32)

    def bn(self, x, gamma_scale=1.0):
        """BatchNormalization whose running stats are the traced ones."""
        name, v = x
        c = v.shape[1]
        mean = v.mean(axis=(0, 2, 3))
        var = v.var(axis=(0, 2, 3)) + 1e-3
        gamma = self.rng.uniform(0.4, 1.0, c) * gamma_scale
        beta = self.rng.normal(0.0, 0.2, c)
        eps = 1e-5
        nid = self._id("bn")
        out = nid + "_out"
        ins = [name] + [
            self._const(f"{nid}.{s}", a)
            for s, a in (("weight", gamma), ("bias", beta), ("running_mean", mean), ("running_var", var))
        ]
        self.nodes.append(helper.make_node("BatchNormalization", ins, [out], name=nid, epsilon=eps))
        shp = (1, c, 1, 1)
        y = (v - mean.reshape(shp)) / np.sqrt(var.reshape(shp) + eps) * gamma.reshape(shp) + beta.reshape(shp)
        return out, y.astype(np.float32)

    def relu(self, x):
        name, v = x
        nid = self._id("relu")
        self.nodes.append(helper.make_node("Relu", [name], [nid + "_out"], name=nid))
        return nid + "_out", np.maximum(v, 0)

    def relu6(self, x):
        name, v = x
        nid = self._id("clip")
        lo, hi = self._const(nid + ".min", np.float32(0)), self._const(nid + ".max", np.float32(6))
        self.nodes.append(helper.make_node("Clip", [name, lo, hi], [nid + "_out"], name=nid))
        return nid + "_out", np.clip(v, 0, 6)

    def add(self, a, b):
        nid = self._id("add")
        self.nodes.append(helper.make_node("Add", [a[0], b[0]], [nid + "_out"], name=nid))
        return nid + "_out", a[1] + b[1]

    def maxpool(self, x, k, stride, pad):
        name, v = x
        nid = self._id("maxpool")
        self.nodes.append(
            helper.make_node(
                "MaxPool", [name], [nid + "_out"], name=nid, kernel_shape=[k, k], strides=[stride, stride], pads=[pad] * 4
            )
        )
        vp = np.pad(v, ((0, 0), (0, 0), (pad, pad), (pad, pad)), constant_values=-np.inf)
        win = _windows(vp, k, k, stride, 0)
        return nid + "_out", win.max(axis=(4, 5))

    def gap_flatten(self, x):
        name, v = x
        nid = self._id("gap")
        self.nodes.append(helper.make_node("GlobalAveragePool", [name], [nid + "_out"], name=nid))
        fid = self._id("flatten")
        self.nodes.append(helper.make_node("Flatten", [nid + "_out"], [fid + "_out"], name=fid, axis=1))
        return fid + "_out", v.mean(axis=(2, 3))

    def linear(self, x, nout, init="torch"):
        """nn.Linear as MatMul(x, W^T) + Add(bias), the 2-D weight stored KxN."""
        name, v = x
        k = v.shape[-1]
        if init == "kaiming":
            w = self.rng.standard_normal((k, nout)) * np.sqrt(2.0 / k)
            b = self.rng.normal(0.0, 0.05, nout)
        else:  # torch.nn.Linear's default
            lim = 1.0 / np.sqrt(k)
            w = self.rng.uniform(-lim, lim, (k, nout))
            b = self.rng.uniform(-lim, lim, nout)
        w, b = w.astype(np.float32), b.astype(np.float32)
        mid = self._id("matmul")
        self.nodes.append(helper.make_node("MatMul", [name, self._const(mid + ".weight", w)], [mid + "_out"], name=mid))
        aid = self._id("bias")
        self.nodes.append(
            helper.make_node("Add", [mid + "_out", self._const(aid + ".bias", b)], [aid + "_out"], name=aid)
        )
        return aid + "_out", (v @ w + b).astype(np.float32)

    def finish(self, y):
        name, v = y
        self.nodes.append(helper.make_node("Identity", [name], ["output"], name="output_identity"))
        out_shape = [self.input_shape[0]] + list(v.shape[1:])
        g = helper.make_graph(
            self.nodes,
            self.name,
            [helper.make_tensor_value_info("input", TensorProto.FLOAT, self.input_shape)],
            [helper.make_tensor_value_info("output", TensorProto.FLOAT, out_shape)],
            self.inits,
        )
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="shiftnn-peers")
        m.ir_version = 8  # readable by older runtimes (ncnn/pnnx, tract)
        onnx.checker.check_model(m, full_check=True)
        return m


def conv_bn(b, x, cout, k, stride=1, relu=True, group=1, relu6=False, gamma_scale=1.0):
    y = b.bn(b.conv(x, cout, k, stride, group=group), gamma_scale)
    if relu6:
        return b.relu6(y)
    return b.relu(y) if relu else y


def basic_block(b, x, cout, stride):
    """ResNet BasicBlock; the last BN of the branch has smaller gamma, as trained ResNets do."""
    cin = x[1].shape[1]
    y = conv_bn(b, x, cout, 3, stride)
    y = conv_bn(b, y, cout, 3, 1, relu=False, gamma_scale=0.5)
    sc = conv_bn(b, x, cout, 1, stride, relu=False) if (stride != 1 or cin != cout) else x
    return b.relu(b.add(y, sc))


def resnet18(rng):
    b = Builder("resnet18", [1, 3, 224, 224], rng, TRACE_BATCH)
    x = conv_bn(b, b.x, 64, 7, 2)
    x = b.maxpool(x, 3, 2, 1)
    for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        x = basic_block(b, x, cout, stride)
        x = basic_block(b, x, cout, 1)
    return b.finish(b.linear(b.gap_flatten(x), 1000))


def resnet20(rng):
    b = Builder("resnet20", [1, 3, 32, 32], rng, 16)
    x = conv_bn(b, b.x, 16, 3)
    for cout, stride in ((16, 1), (32, 2), (64, 2)):
        x = basic_block(b, x, cout, stride)
        for _ in range(2):
            x = basic_block(b, x, cout, 1)
    return b.finish(b.linear(b.gap_flatten(x), 10))


def mobilenetv2(rng):
    b = Builder("mobilenetv2", [1, 3, 224, 224], rng, TRACE_BATCH)
    x = conv_bn(b, b.x, 32, 3, 2, relu6=True)
    cin = 32
    # (expansion t, channels c, repeats n, first stride s): torchvision's table.
    for t, c, n, s in ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)):
        for i in range(n):
            stride = s if i == 0 else 1
            y = x
            if t != 1:
                y = conv_bn(b, y, cin * t, 1, relu6=True)
            y = conv_bn(b, y, cin * t, 3, stride, group=cin * t, relu6=True)
            y = conv_bn(b, y, c, 1, relu=False, gamma_scale=0.5 if (stride == 1 and cin == c) else 1.0)
            x = b.add(y, x) if (stride == 1 and cin == c) else y
            cin = c
    x = conv_bn(b, x, 1280, 1, relu6=True)
    return b.finish(b.linear(b.gap_flatten(x), 1000))


def linear(rng, batch):
    b = Builder(f"linear_b{batch}", [batch, 4096], rng, batch)
    return b.finish(b.linear(b.x, 4096))


def mlp4(rng):
    b = Builder("mlp4_b1", [1, 4096], rng, 8)
    x = b.x
    for i in range(4):
        x = b.linear(x, 4096, init="kaiming")
        if i < 3:
            x = b.relu(x)
    return b.finish(x)


MODELS = {
    "resnet18": resnet18,
    "resnet20": resnet20,
    "mobilenetv2": mobilenetv2,
    "linear_b1": lambda r: linear(r, 1),
    "linear_b64": lambda r: linear(r, 64),
    "mlp4_b1": mlp4,
}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "models"))
    ap.add_argument("--only", default="", help="comma-separated model names (default: all)")
    ap.add_argument("--seed", type=int, default=20261128)
    a = ap.parse_args()
    names = [n for n in a.only.split(",") if n] or list(MODELS)
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        sys.exit(f"unknown model(s) {unknown}; known: {', '.join(MODELS)}")
    os.makedirs(a.out, exist_ok=True)
    for n in names:
        # Seeded per model name, so --only gives the same weights.
        rng = np.random.default_rng(a.seed + list(MODELS).index(n))
        m = MODELS[n](rng)
        path = os.path.join(a.out, n + ".onnx")
        onnx.save(m, path)
        print(f"{path}: {len(m.graph.node)} nodes, {os.path.getsize(path) / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
