"""A CIFAR-10-format folder (python pickles, N x 3072 rows of R, G, B planes) of generated
32 px images: each class a coloured stripe pattern of its own orientation and frequency, plus
noise and a random shift, so that the kNN monitor has something to learn."""

import pickle
import sys
from pathlib import Path

import numpy as np

root, n_train, n_test = (
    Path(sys.argv[1]) / "cifar-10-batches-py",
    int(sys.argv[2]),
    int(sys.argv[3]),
)
root.mkdir(parents=True)
yy, xx = np.mgrid[:32, :32] / 32.0


def make(n, seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n)
    angle, freq = y * np.pi / 10, 2 + (y % 3)  # N
    phase = rng.uniform(0, 2 * np.pi, n)
    proj = np.cos(angle)[:, None, None] * xx + np.sin(angle)[:, None, None] * yy  # N x 32 x 32
    wave = np.sin(2 * np.pi * freq[:, None, None] * proj + phase[:, None, None])
    colour = np.random.default_rng(99).uniform(60, 200, (10, 3))[y]  # N x 3, per class
    x = colour[:, None, None, :] + 50 * wave[..., None] + rng.normal(0, 20, (n, 32, 32, 3))
    x = np.clip(x, 0, 255).astype(np.uint8)  # N x 32 x 32 x 3
    return x.transpose(0, 3, 1, 2).reshape(n, -1), y  # N x 3072


def dump(name, doc):
    with open(root / name, "wb") as f:
        pickle.dump(doc, f, protocol=2)


x, y = make(n_train, 0)
for b, (xs, ys) in enumerate(zip(np.array_split(x, 5), np.array_split(y, 5), strict=True)):
    dump(f"data_batch_{b + 1}", {b"data": xs, b"labels": ys.tolist()})
x, y = make(n_test, 1)
dump("test_batch", {b"data": x, b"labels": y.tolist()})
dump("batches.meta", {b"label_names": [f"class{i}".encode() for i in range(10)]})
