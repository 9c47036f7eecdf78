#!/usr/bin/env python3
"""Prepare Fashion-MNIST arrays for shiftnn examples and tests (stdlib + numpy only).

Reads the four idx .gz files of Fashion-MNIST (Debian package
`dataset-fashion-mnist`, default directory /usr/share/datasets/fashion-mnist):

    train-images-idx3-ubyte.gz  train-labels-idx1-ubyte.gz
    t10k-images-idx3-ubyte.gz   t10k-labels-idx1-ubyte.gz

and writes into --out (default examples/fmnist/data):

    test.npz   x: float32 (10000, 1, 28, 28), y: int64 (10000,)   -- the TEST split
    calib.npy  float32 (512, 1, 28, 28): 512 TRAIN images drawn without
               replacement with numpy.random.default_rng(0) (calibration set)

Normalisation (identical to python/train_fmnist.py and the DenseShift trainer):

    x = (v / 255 - 0.2860) / 0.3530        v = raw uint8 pixel value

computed in float32. MEAN/STD are the Fashion-MNIST train-set pixel mean/std.

Usage: python3 python/fmnist_data.py --out examples/fmnist/data [--src DIR]
"""
import argparse
import gzip
import os
import struct
import sys

import numpy as np

MEAN = 0.2860
STD = 0.3530
DEFAULT_SRC = "/usr/share/datasets/fashion-mnist"
CALIB_COUNT = 512
CALIB_SEED = 0


def read_idx(path):
    """Read an idx file (optionally gzip-compressed) into a numpy array."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4:
        raise ValueError(f"{path}: too short for an idx header")
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte idx file")
    dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise ValueError(f"{path}: size mismatch ({body.size} bytes for dims {dims})")
    return body.reshape(dims)


def find(src, stem):
    for name in (stem + ".gz", stem):
        p = os.path.join(src, name)
        if os.path.exists(p):
            return p
    raise FileNotFoundError(f"{stem}(.gz) not found in {src}")


def normalise(images_u8):
    """uint8 (N,28,28) -> float32 (N,1,28,28) normalised as in training."""
    x = images_u8.astype(np.float32) / np.float32(255.0)
    x = (x - np.float32(MEAN)) / np.float32(STD)
    return x[:, None, :, :].astype(np.float32)


def load_split(src, split):
    """split: 'train' or 't10k'. Returns (images uint8 (N,28,28), labels int64 (N,))."""
    images = read_idx(find(src, f"{split}-images-idx3-ubyte"))
    labels = read_idx(find(src, f"{split}-labels-idx1-ubyte")).astype(np.int64)
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{split}: {images.shape[0]} images but {labels.shape[0]} labels")
    return images, labels


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--src", default=DEFAULT_SRC, help="directory holding the idx(.gz) files")
    ap.add_argument("--out", default="examples/fmnist/data", help="output directory")
    args = ap.parse_args(argv)

    os.makedirs(args.out, exist_ok=True)
    test_x, test_y = load_split(args.src, "t10k")
    np.savez(os.path.join(args.out, "test.npz"), x=normalise(test_x), y=test_y)

    train_x, _ = load_split(args.src, "train")
    rng = np.random.default_rng(CALIB_SEED)
    idx = np.sort(rng.choice(train_x.shape[0], size=CALIB_COUNT, replace=False))
    np.save(os.path.join(args.out, "calib.npy"), normalise(train_x[idx]))
    print(f"wrote {args.out}/test.npz ({test_x.shape[0]} images) and "
          f"{args.out}/calib.npy ({CALIB_COUNT} train images)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
