"""Shared training / evaluation helpers for the Fashion-MNIST trainers (PyTorch + onnxruntime)."""
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

_PY_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _PY_DIR not in sys.path:
    sys.path.insert(0, _PY_DIR)
import fmnist_data  # noqa: E402  (numpy-only loader, same normalisation as the data files)

REPO = os.path.dirname(_PY_DIR)


def load_fmnist(src=fmnist_data.DEFAULT_SRC):
    """Returns (train_x, train_y, test_x, test_y) as torch tensors, normalised like fmnist_data."""
    trx, try_ = fmnist_data.load_split(src, "train")
    tex, tey = fmnist_data.load_split(src, "t10k")
    return (torch.from_numpy(fmnist_data.normalise(trx)), torch.from_numpy(try_),
            torch.from_numpy(fmnist_data.normalise(tex)), torch.from_numpy(tey))


def augment(x):
    """Random horizontal flip + random shift by up to 2 pixels (zero = background padding)."""
    n = x.shape[0]
    flip = torch.rand(n) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    bg = (0.0 - fmnist_data.MEAN) / fmnist_data.STD
    xp = F.pad(x, (2, 2, 2, 2), value=bg)
    dx, dy = np.random.randint(0, 5, size=2)
    return xp[:, :, dy:dy + 28, dx:dx + 28]


def kd_loss(student_logits, teacher_logits, y, alpha, temp):
    """Hinton logit distillation: (1-alpha) * CE(y) + alpha * T^2 * KL(teacher_T || student_T)."""
    ce = F.cross_entropy(student_logits, y)
    kl = F.kl_div(F.log_softmax(student_logits / temp, 1), F.log_softmax(teacher_logits / temp, 1),
                  reduction="batchmean", log_target=True)
    return (1 - alpha) * ce + alpha * temp * temp * kl


def load_onnx_weights(model, path):
    """Load an FmnistResNet state (e.g. the FP32 teacher) from an ONNX file exported by
    models.export_onnx: its initializer names are the PyTorch parameter / buffer names."""
    import onnx
    from onnx import numpy_helper
    inits = {t.name: numpy_helper.to_array(t) for t in onnx.load(path).graph.initializer}
    sd = model.state_dict()
    missing = [k for k in sd if k not in inits and not k.endswith("num_batches_tracked")]
    if missing:
        raise ValueError(f"{path}: no initializer for {missing}")
    model.load_state_dict({k: (torch.from_numpy(inits[k].copy()) if k in inits else v) for k, v in sd.items()})
    return model


def train_epoch(model, opt, sched, x, y, batch, log_every=0, after_step=None, teacher=None,
                kd_alpha=0.0, kd_temp=1.0):
    model.train()
    perm = torch.randperm(x.shape[0])
    tot_loss, correct, seen = 0.0, 0, 0
    for i in range(0, x.shape[0], batch):
        idx = perm[i:i + batch]
        xb = augment(x[idx]).contiguous(memory_format=torch.channels_last)
        yb = y[idx]
        out = model(xb)
        if teacher is not None:
            with torch.no_grad():
                tout = teacher(xb)
            loss = kd_loss(out, tout, yb, kd_alpha, kd_temp)
        else:
            loss = F.cross_entropy(out, yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step()
        if after_step is not None:
            after_step()
        tot_loss += loss.item() * len(idx)
        correct += (out.argmax(1) == yb).sum().item()
        seen += len(idx)
    return tot_loss / seen, correct / seen


@torch.no_grad()
def evaluate_torch(model, x, y, batch=1000):
    model.eval()
    correct = 0
    for i in range(0, x.shape[0], batch):
        out = model(x[i:i + batch].contiguous(memory_format=torch.channels_last))
        correct += (out.argmax(1) == y[i:i + batch]).sum().item()
    return correct / x.shape[0]


def evaluate_onnx(path, x, y, batch=1000):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    xn = x.numpy() if hasattr(x, "numpy") else x
    yn = y.numpy() if hasattr(y, "numpy") else y
    correct = 0
    for i in range(0, xn.shape[0], batch):
        out = sess.run(["logits"], {"input": xn[i:i + batch]})[0]
        correct += int((out.argmax(1) == yn[i:i + batch]).sum())
    return correct / xn.shape[0]


class Timer:
    def __init__(self):
        self.t0 = time.time()

    def __call__(self):
        return time.time() - self.t0
