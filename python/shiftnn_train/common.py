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


def train_epoch(model, opt, sched, x, y, batch, log_every=0, after_step=None):
    model.train()
    perm = torch.randperm(x.shape[0])
    tot_loss, correct, seen = 0.0, 0, 0
    for i in range(0, x.shape[0], batch):
        idx = perm[i:i + batch]
        xb = augment(x[idx]).contiguous(memory_format=torch.channels_last)
        yb = y[idx]
        out = model(xb)
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
