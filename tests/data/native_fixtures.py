"""Tiny datasets written in their native formats, and a reader that decodes a `.beton` back.

The writers follow each format's published layout (not distcl's readers): CIFAR pickles with
bytes keys and `N x 3072` rows of R, G, B planes; STL-10 `.bin` files with each image stored
column-major (channel, column, row) and labels 1..10; an ImageFolder tree of PNG and JPEG
files of mixed sizes. Images are smooth colour gradients with an asymmetric mark, so a
transposed or flipped read shows, and JPEG storage stays close to the source.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np


def images(n: int, h: int, w: int, seed: int) -> np.ndarray:
    """n x h x w x 3 uint8: gradients plus a bright block in the top-left corner."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = rng.uniform(40, 200, (n, 1, 1, 3))
    slope = rng.uniform(-1.5, 1.5, (n, 1, 1, 3)) * 64 / max(h, w)
    out = base + slope * (yy[None, :, :, None] - 0.7 * xx[None, :, :, None])
    out[:, : h // 4, : w // 8] = 250  # asymmetric: tall, thin, top-left
    return np.clip(out, 0, 255).astype(np.uint8)


def _dump(path: Path, doc: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump(doc, f, protocol=2)


def _cifar_rows(x: np.ndarray) -> np.ndarray:
    return x.transpose(0, 3, 1, 2).reshape(len(x), -1)  # N x 3072: R plane, G plane, B plane


def make_cifar10(root: Path, per_batch: int = 8, n_test: int = 12) -> dict:
    """`root/cifar-10-batches-py/` with 5 train batches, a test batch and batches.meta."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    x = images(5 * per_batch + n_test, 32, 32, seed=10)
    y = np.arange(len(x)) % 10
    for b in range(5):
        s = slice(b * per_batch, (b + 1) * per_batch)
        doc = {b"batch_label": b"training batch", b"labels": y[s].tolist()}
        _dump(folder / f"data_batch_{b + 1}", {**doc, b"data": _cifar_rows(x[s])})
    s = slice(5 * per_batch, None)
    _dump(folder / "test_batch", {b"labels": y[s].tolist(), b"data": _cifar_rows(x[s])})
    _dump(folder / "batches.meta", {b"label_names": [f"c{i}".encode() for i in range(10)]})
    return {"train": (x[: 5 * per_batch], y[: 5 * per_batch]), "test": (x[s], y[s])}


def make_cifar100(root: Path, n_train: int = 30, n_test: int = 10) -> dict:
    """`root/cifar-100-python/` with train, test and meta; fine labels up to 99."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    out = {}
    for split, n, seed in (("train", n_train, 20), ("test", n_test, 21)):
        x = images(n, 32, 32, seed)
        fine = (np.arange(n) * 37 + seed) % 100
        doc = {b"data": _cifar_rows(x), b"fine_labels": fine.tolist()}
        _dump(folder / split, {**doc, b"coarse_labels": (fine // 5).tolist()})
        out[split] = (x, fine)
    _dump(folder / "meta", {b"fine_label_names": [f"f{i}".encode() for i in range(100)]})
    return out


def make_stl10(root: Path, n_train: int = 10, n_test: int = 6, n_unlabeled: int = 7) -> dict:
    """`root/stl10_binary/` with train/test X and y, and unlabeled_X (96 x 96, column-major)."""
    folder = root / "stl10_binary"
    folder.mkdir(parents=True)
    out = {}
    for split, n, seed in (
        ("train", n_train, 30),
        ("test", n_test, 31),
        ("unlabeled", n_unlabeled, 32),
    ):
        x = images(n, 96, 96, seed)
        # per image: channel-major, then columns, then rows (Fortran order of H x W per channel)
        (folder / f"{split}_X.bin").write_bytes(x.transpose(0, 3, 2, 1).tobytes())
        y = np.full(n, -1)
        if split != "unlabeled":
            y = (np.arange(n) * 3) % 10
            (folder / f"{split}_y.bin").write_bytes((y + 1).astype(np.uint8).tobytes())
        out[split] = (x, y)
    return out


def make_imagefolder(root: Path) -> dict:
    """`root/train/<class>/` and `root/val/<class>/`: PNG and JPEG files of mixed sizes."""
    from PIL import Image

    classes = ["zebra", "ant", "moth"]  # sorted: ant=0, moth=1, zebra=2
    out = {}
    for split, sizes in (("train", [(40, 56), (48, 48), (64, 40)]), ("val", [(36, 36)])):
        files = []
        for c, name in enumerate(classes):
            (root / split / name).mkdir(parents=True)
            for k, (h, w) in enumerate(sizes):
                img = images(1, h, w, seed=100 * c + k + (split == "val"))[0]
                path = root / split / name / f"{k:02d}.png"
                Image.fromarray(img).save(path)
                files.append((path, img, sorted(classes).index(name)))
        if split == "train":  # one JPEG per class (lossy: compared loosely)
            for name in classes:
                Image.fromarray(images(1, 30, 44, seed=7)[0]).save(root / split / name / "x.JPG")
        (root / split / "ant" / "notes.txt").write_text("not an image")
        out[split] = files
    return out


def read_beton(path: Path) -> tuple[list[np.ndarray], np.ndarray]:
    """Every stored image (H x W x 3 uint8, JPEGs decoded with Pillow) and label of a `.beton`,
    straight from the file's metadata table and data region (no FFCV pipeline compile)."""
    from ffcv.reader import Reader
    from PIL import Image

    reader = Reader(str(path))
    meta = reader.metadata
    sizes = {int(r["ptr"]): int(r["size"]) for r in reader.alloc_table}
    data = np.memmap(path, dtype=np.uint8, mode="r")
    out = []
    for row in meta["f0"]:  # mode (0 jpg, 1 raw), width, height, data_ptr
        ptr, h, w = int(row["data_ptr"]), int(row["height"]), int(row["width"])
        if row["mode"] == 1:
            out.append(np.array(data[ptr : ptr + h * w * 3]).reshape(h, w, 3))
        else:
            jpg = bytes(data[ptr : ptr + sizes[ptr]])
            out.append(np.asarray(Image.open(io.BytesIO(jpg)).convert("RGB")))
    return out, np.asarray(meta["f1"], dtype=np.int64)
