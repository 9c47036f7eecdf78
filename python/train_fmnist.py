#!/usr/bin/env python3
"""Train the FP32 Fashion-MNIST example CNN and export it to ONNX (BatchNorm kept unfolded).

    nice -n 19 /work/venv/bin/python python/train_fmnist.py            # -> examples/fmnist/fmnist_fp32.onnx

Model: shiftnn_train.models.FmnistResNet (see its docstring). Input normalisation is
(v/255 - 0.2860)/0.3530, as in python/fmnist_data.py. Needs torch, onnx, onnxruntime
(offline only; never needed by CI or setup). Writes examples/fmnist/README.md with the
measured onnxruntime top-1 and the training time.
"""
import argparse
import os

# Busy-waiting OpenMP threads collapse under CPU contention (measured 6.3 s/step vs 0.06 s/step
# with 2 threads on 2 cores shared with compilers); must be set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import sys
from collections import Counter

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from shiftnn_train.common import REPO, Timer, load_fmnist, train_epoch, evaluate_torch, evaluate_onnx  # noqa: E402
from shiftnn_train.models import FmnistResNet, export_onnx  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.2)
    ap.add_argument("--wd", type=float, default=5e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--src", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--out", default=os.path.join(REPO, "examples/fmnist/fmnist_fp32.onnx"))
    ap.add_argument("--readme", default=os.path.join(REPO, "examples/fmnist/README.md"),
                    help="README to write ('' to skip)")
    args = ap.parse_args()

    torch.set_num_threads(2)
    torch.manual_seed(args.seed)
    import numpy as np
    np.random.seed(args.seed)
    trx, try_, tex, tey = load_fmnist(args.src)

    model = FmnistResNet().to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, nesterov=True,
                          weight_decay=args.wd)
    steps = args.epochs * ((trx.shape[0] + args.batch - 1) // args.batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=steps,
                                                pct_start=0.25)
    timer = Timer()
    for ep in range(args.epochs):
        loss, acc = train_epoch(model, opt, sched, trx, try_, args.batch)
        tacc = evaluate_torch(model, tex, tey)
        print(f"epoch {ep + 1}/{args.epochs} loss {loss:.4f} train {acc:.4f} test {tacc:.4f} "
              f"[{timer():.0f}s]", flush=True)
    train_time = timer()

    model = model.to(memory_format=torch.contiguous_format)
    ops = export_onnx(model, args.out)
    counts = Counter(ops)
    print("ONNX ops:", dict(counts))
    assert counts["BatchNormalization"] > 0, "BatchNormalization was folded into Conv"
    ort_acc = evaluate_onnx(args.out, tex, tey)
    size = os.path.getsize(args.out)
    print(f"onnxruntime FP32 top-1 {ort_acc:.4f}; train time {train_time:.0f}s; "
          f"{args.out} {size} bytes")

    if args.readme:
        nparams = sum(p.numel() for p in model.parameters())
        with open(args.readme, "w") as f:
            f.write(f"""# Fashion-MNIST example models

`fmnist_fp32.onnx`: small ResNet-style CNN, FP32, ONNX opset 13, {size // 1024} KB,
{nparams} parameters. Input `input` float32 [N,1,28,28] (dynamic batch), normalised as
`(v/255 - 0.2860)/0.3530`; output `logits` [N,10]. BatchNormalization nodes are kept
separate from Conv (not folded), as the converter expects.

| stage  | layers                                                        | output   |
|--------|---------------------------------------------------------------|----------|
| stem   | Conv3x3 1->16 stride 2, BN, ReLU                              | 16x14x14 |
| stage1 | BasicBlock 16->16                                             | 16x14x14 |
| stage2 | BasicBlock 16->32 stride 2 (1x1 Conv + BN shortcut)           | 32x7x7   |
| stage3 | BasicBlock 32->64 stride 2 (1x1 Conv + BN shortcut)           | 64x4x4   |
| head   | GlobalAveragePool, Flatten, Gemm 64->10                       | 10       |

BasicBlock = Conv3x3 + BN + ReLU, Conv3x3 + BN, add shortcut, ReLU. Convs have no bias.

**Accuracy** (onnxruntime, 10000 Fashion-MNIST test images): **{ort_acc * 100:.2f}% top-1**.

**Training**: PyTorch, {args.epochs} epochs, SGD (Nesterov, momentum 0.9, weight decay
{args.wd}), batch {args.batch}, one-cycle LR (max {args.lr}), augmentation: random horizontal
flip and random shift of up to 2 pixels; seed {args.seed}. Took {train_time / 60:.1f} min on
2 CPU cores (niced, shared with other jobs).

Regenerate (needs torch, onnx, onnxruntime; offline only):

    nice -n 19 python3 python/train_fmnist.py

Test data (numpy only, run by setup, not committed):

    python3 python/fmnist_data.py --out examples/fmnist/data

writes `data/test.npz` (`x` float32 [10000,1,28,28], `y` int64) and `data/calib.npy`
(512 normalised train images, for int8 calibration).
""")


if __name__ == "__main__":
    main()
