"""Small ResNet-style CNN for Fashion-MNIST (28x28x1), shared by the FP32 and DenseShift trainers.

Architecture (the `fmnist_fp32.onnx` example):

    stem:   Conv3x3(1->16, stride 2, pad 1) + BN + ReLU         28x28 -> 14x14
    stage1: BasicBlock(16->16, stride 1)                        14x14
    stage2: BasicBlock(16->32, stride 2, 1x1 conv+BN shortcut)   7x7
    stage3: BasicBlock(32->64, stride 2, 1x1 conv+BN shortcut)   4x4
    head:   GlobalAveragePool -> Flatten -> Linear(64->10)

(The stride-2 stem keeps a training epoch around a minute on 2 shared CPU cores;
`stem_stride=1` gives the 28/14/7 variant at ~4x the cost.)

BasicBlock: conv3x3(stride)+BN+ReLU -> conv3x3+BN, + shortcut, ReLU.
All convolutions are bias-free (each is followed by BatchNorm).

`conv` / `linear` factories let the DenseShift trainer swap in shift layers for the
inner convolutions (and optionally the stem / head) without duplicating the model.
"""
import torch
import torch.nn as nn


def default_conv(cin, cout, k, stride=1, padding=0):
    return nn.Conv2d(cin, cout, k, stride=stride, padding=padding, bias=False)


def default_linear(cin, cout):
    return nn.Linear(cin, cout)


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride, conv=default_conv):
        super().__init__()
        self.conv1 = conv(cin, cout, 3, stride, 1)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = conv(cout, cout, 3, 1, 1)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=False)
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(conv(cin, cout, 1, stride, 0), nn.BatchNorm2d(cout))
        else:
            self.shortcut = nn.Identity()

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class FmnistResNet(nn.Module):
    def __init__(self, widths=(16, 32, 64), strides=(1, 2, 2), stem_stride=2, num_classes=10, conv=default_conv,
                 stem_conv=default_conv, head_linear=default_linear):
        super().__init__()
        w1, w2, w3 = widths
        s1, s2, s3 = strides
        self.stem = nn.Sequential(stem_conv(1, w1, 3, stem_stride, 1), nn.BatchNorm2d(w1), nn.ReLU())
        self.layer1 = BasicBlock(w1, w1, s1, conv)
        self.layer2 = BasicBlock(w1, w2, s2, conv)
        self.layer3 = BasicBlock(w2, w3, s3, conv)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.fc = head_linear(w3, num_classes)

    def forward(self, x):
        x = self.stem(x)
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.flatten(self.pool(x)))


def export_onnx(model, path, opset=13):
    """Export with BatchNormalization kept as separate nodes (no Conv+BN folding).

    Input "input" (N,1,28,28), output "logits" (N,10), dynamic batch axis.
    Returns the list of node op types in the written graph.
    """
    import onnx
    model = model.eval()
    dummy = torch.zeros(1, 1, 28, 28)
    kwargs = dict(
        input_names=["input"], output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        opset_version=opset, do_constant_folding=False,
        training=torch.onnx.TrainingMode.PRESERVE,
    )
    try:  # torch >= 2.5 defaults to the dynamo exporter; the TorchScript one keeps BN unfused
        torch.onnx.export(model, (dummy,), path, dynamo=False, **kwargs)
    except TypeError:
        torch.onnx.export(model, (dummy,), path, **kwargs)
    m = onnx.load(path)
    _inline_identity_initializers(m)
    onnx.checker.check_model(m)
    onnx.save(m, path)
    return [n.op_type for n in m.graph.node]


def _inline_identity_initializers(m):
    """The exporter de-duplicates equal initializers and re-creates the copies with Identity
    nodes (e.g. a block's bn2.bias and its shortcut BN bias get identical gradients, so they stay
    equal). Replace each Identity-of-initializer by a real initializer so every BN parameter is
    a plain initializer."""
    from onnx import numpy_helper
    inits = {t.name: t for t in m.graph.initializer}
    keep = []
    for n in m.graph.node:
        if n.op_type == "Identity" and n.input[0] in inits:
            arr = numpy_helper.to_array(inits[n.input[0]])
            m.graph.initializer.append(numpy_helper.from_array(arr.copy(), n.output[0]))
        else:
            keep.append(n)
    del m.graph.node[:]
    m.graph.node.extend(keep)
