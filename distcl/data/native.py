"""CIFAR-10, CIFAR-100 and STL-10 read from their distributed file formats.

- CIFAR (Krizhevsky 2009), as torchvision lays it out: `ROOT/cifar-10-batches-py/` with pickled
  `data_batch_1..5`, `test_batch`, `batches.meta`; `ROOT/cifar-100-python/` with `train`,
  `test`, `meta` (fine labels are used). Each pickle holds `data` (`N x 3072` uint8, per image
  1024 R, 1024 G, 1024 B values in row-major order) and the labels. They are Python 2 pickles,
  read with `encoding="bytes"`; pickles can run code, so read only files from a source you trust.
- STL-10 (Coates et al. 2011), the binary release: `ROOT/stl10_binary/{train,test}_{X,y}.bin`
  and `unlabeled_X.bin`. Images are `3 x 96 x 96` uint8 stored column-major (channel, then
  column, then row); labels are bytes 1..10, returned as 0..9. The unlabeled split has label
  UNLABELED (-1); `train+unlabeled` is the 5k labeled images followed by the 100k unlabeled
  ones (the STL-10 self-supervised pre-training set). `unlabeled_X.bin` (2.7 GB) is memory-mapped.

`ROOT` defaults to `CACHE` (`<data.beton_dir>/raw`). Nothing is downloaded unless asked
(`distcl prepare --download` or `data.download=true`); then torchvision's downloaders fetch the
official archives into `ROOT`.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from distcl.data.source_types import ArraySource, ConcatSource, DataError

UNLABELED = -1  # label of STL-10's unlabeled images (and any split without labels)
CIFAR = {
    # dataset: (folder, train files, test files, label key, meta file, meta key, classes)
    "cifar10": (
        "cifar-10-batches-py",
        [f"data_batch_{i}" for i in range(1, 6)],
        ["test_batch"],
        "labels",
        "batches.meta",
        "label_names",
        10,
    ),
    "cifar100": (
        "cifar-100-python",
        ["train"],
        ["test"],
        "fine_labels",
        "meta",
        "fine_label_names",
        100,
    ),
}
STL_FOLDER = "stl10_binary"
STL_SPLITS = ("train", "test", "unlabeled", "train+unlabeled")
STL_SIDE = 96


def _download_hint(dataset: str, folder: Path) -> str:
    return (
        f"Put the {dataset} files in {folder} (data.root / --root names the folder above it), "
        f"or let distcl fetch them: distcl prepare --dataset {dataset} --download (or "
        "data.download=true for distcl train). distcl downloads only when asked."
    )


def _download(dataset: str, root: Path) -> None:
    """Fetch the official archive into `root` with torchvision (only on explicit request)."""
    from torchvision import datasets

    root.mkdir(parents=True, exist_ok=True)
    print(f"distcl: downloading {dataset} into {root} (data.download=true)", flush=True)
    try:
        if dataset == "stl10":
            datasets.STL10(str(root), split="train", download=True)
        else:
            cls = datasets.CIFAR10 if dataset == "cifar10" else datasets.CIFAR100
            cls(str(root), train=True, download=True)
    except (OSError, RuntimeError) as exc:  # URLError is an OSError
        raise DataError(f"downloading {dataset} into {root} failed: {exc}") from None


def _folder(root: Path, name: str, dataset: str, download: bool) -> Path:
    """`root/name`, or `root` itself when it already is that folder; downloads if asked."""
    if (root / name).is_dir():
        return root / name
    if root.name == name and root.is_dir():
        return root
    if download:
        _download(dataset, root)
        if (root / name).is_dir():
            return root / name
    raise DataError(f"{dataset} folder {root / name} not found. {_download_hint(dataset, root)}")


def _unpickle(path: Path, dataset: str, root: Path) -> dict:
    if not path.is_file():
        raise DataError(f"{dataset} file {path} is missing. {_download_hint(dataset, root)}")
    try:
        with open(path, "rb") as f:
            doc = pickle.load(f, encoding="bytes")
    except (pickle.UnpicklingError, EOFError, OSError, ValueError) as exc:
        raise DataError(
            f"cannot read {path} ({exc}); the file is corrupt, fetch it again"
        ) from None
    # Python 2 pickles come back with bytes keys; re-pickled copies may have str keys.
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in doc.items()}


def cifar(dataset: str, split: str, root: Path, download: bool = False) -> ArraySource:
    """CIFAR-10 or CIFAR-100 `train` (50k) or `test` (10k): 32x32 RGB."""
    folder_name, train, test, label_key, meta_file, meta_key, classes = CIFAR[dataset]
    if split not in ("train", "test"):
        raise DataError(f"{dataset} split must be train or test, got {split!r}")
    folder = _folder(root, folder_name, dataset, download)
    images, labels = [], []
    for name in train if split == "train" else test:
        doc = _unpickle(folder / name, dataset, root)
        data = np.asarray(doc["data"], dtype=np.uint8)
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise DataError(f"{folder / name}: data is {data.shape}, expected N x 3072")
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))  # N x 32 x 32 x 3
        labels.append(np.asarray(doc[label_key], dtype=np.int64))
    if (folder / meta_file).is_file():
        classes = len(_unpickle(folder / meta_file, dataset, root)[meta_key])
    x, y = np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels)
    if len(x) != len(y) or (len(y) and not 0 <= y.min() <= y.max() < classes):
        raise DataError(f"{folder}: {len(x)} images, {len(y)} labels outside 0..{classes - 1}")
    return ArraySource(dataset, split, x, y, classes)


def _stl_images(path: Path, root: Path) -> np.ndarray:
    """`N x 96 x 96 x 3` uint8 view of a column-major `*_X.bin` (memory-mapped, not copied)."""
    if not path.is_file():
        raise DataError(f"stl10 file {path} is missing. {_download_hint('stl10', root)}")
    per_image = 3 * STL_SIDE * STL_SIDE
    if path.stat().st_size % per_image:
        raise DataError(f"{path} is {path.stat().st_size} bytes, not a multiple of {per_image}")
    raw = np.memmap(path, dtype=np.uint8, mode="r").reshape(-1, 3, STL_SIDE, STL_SIDE)
    return raw.transpose(0, 3, 2, 1)  # N x C x W x H (column-major) -> N x H x W x C


def stl10(split: str, root: Path, download: bool = False) -> ArraySource | ConcatSource:
    """STL-10: train (5k), test (8k), unlabeled (100k), train+unlabeled; 96x96 RGB, 10 classes."""
    if split not in STL_SPLITS:
        raise DataError(f"stl10 split must be one of {', '.join(STL_SPLITS)}, got {split!r}")
    if split == "train+unlabeled":
        parts = [stl10("train", root, download), stl10("unlabeled", root, download)]
        return ConcatSource("stl10", split, parts, num_classes=10)
    folder = _folder(root, STL_FOLDER, "stl10", download)
    images = _stl_images(folder / f"{split}_X.bin", root)
    if split == "unlabeled":
        labels = np.full(len(images), UNLABELED, dtype=np.int64)
    else:
        y_path = folder / f"{split}_y.bin"
        if not y_path.is_file():
            raise DataError(f"stl10 file {y_path} is missing. {_download_hint('stl10', root)}")
        labels = np.fromfile(y_path, dtype=np.uint8).astype(np.int64) - 1  # 1..10 -> 0..9
        if len(labels) != len(images) or (
            len(labels) and not 0 <= labels.min() <= labels.max() < 10
        ):
            raise DataError(f"{y_path}: {len(labels)} labels in 1..10 expected for {len(images)}")
    return ArraySource("stl10", split, images, labels, 10)
