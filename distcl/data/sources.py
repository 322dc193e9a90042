"""Raw datasets, read from local files into indexable (image, label) sources.

Each source yields `uint8` images `H x W x C` and integer labels (-1 where a split has none),
and has `name`, `split`, `num_classes`, `channels` and `len()`. The beton writer stores every
source the same way, so the FFCV loaders never see the raw formats; the torchvision fallback
loader reads these sources directly. Readers: Fashion-MNIST and synthetic here, CIFAR and STL-10
in `native.py`, ImageFolder trees in `imagefolder.py`; the types they share (ArraySource,
ConcatSource, DataError) in `source_types.py`, which every reader imports.
"""

from __future__ import annotations

import gzip
import os
import shutil
from pathlib import Path

import numpy as np

from distcl.data.source_types import ArraySource, DataError

FMNIST_DEBIAN_ROOT = "/usr/share/datasets/fashion-mnist"
FMNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _stage_fashion_mnist(root: Path, cache: Path) -> Path:
    """Lay the idx files out as torchvision expects (`CACHE/FashionMNIST/raw/`, uncompressed).

    The Debian package ships `*.gz` files in one flat folder; torchvision's `FashionMNIST` with
    `download=False` reads only uncompressed files from `ROOT/FashionMNIST/raw/`.
    """
    raw = cache / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for images, labels in FMNIST_FILES.values():
        for name in (images, labels):
            dst = raw / name
            if dst.exists():
                continue
            candidates = [root / name, root / f"{name}.gz", root / "FashionMNIST" / "raw" / name]
            src = next((c for c in candidates if c.exists()), None)
            if src is None:
                raise DataError(
                    f"Fashion-MNIST file {name}(.gz) not found in {root}. Install the Debian "
                    "package (sudo apt-get install dataset-fashion-mnist) or pass --root DIR "
                    "pointing at a folder with the idx files."
                )
            tmp = dst.with_suffix(f".tmp{os.getpid()}")  # ranks may stage at the same time
            opener = gzip.open if src.suffix == ".gz" else open
            try:
                with opener(src, "rb") as fin, open(tmp, "wb") as fout:
                    shutil.copyfileobj(fin, fout)
            except (OSError, EOFError) as exc:
                tmp.unlink(missing_ok=True)
                raise DataError(f"cannot read {src}: {exc}; reinstall the dataset") from None
            tmp.rename(dst)
    return cache


def fashion_mnist(split: str, root: str = "", cache: str = "data/raw") -> ArraySource:
    """Fashion-MNIST (Xiao et al. 2017): 60k train / 10k test, 28x28 grey, 10 classes."""
    from torchvision.datasets import FashionMNIST

    if split not in FMNIST_FILES:
        raise DataError(f"Fashion-MNIST split must be train or test, got {split!r}")
    staged = _stage_fashion_mnist(Path(root or FMNIST_DEBIAN_ROOT), Path(cache))
    try:
        ds = FashionMNIST(str(staged), train=split == "train", download=False)
    except RuntimeError as exc:
        raise DataError(f"torchvision could not read Fashion-MNIST from {staged}: {exc}") from None
    images = ds.data.numpy()[..., None]  # N x 28 x 28 x 1
    return ArraySource("fashion_mnist", split, images, ds.targets.numpy().astype(np.int64), 10)


def synthetic(split: str, n: int = 512, resolution: int = 28, classes: int = 4, seed: int = 0):
    """Class-structured random images for tests and smoke runs: each class is a blob pattern."""
    rng = np.random.default_rng(seed + (split == "test"))
    labels = rng.integers(0, classes, size=n)
    yy, xx = np.mgrid[:resolution, :resolution] / resolution
    protos = np.stack(
        [np.sin((c + 1) * 3.0 * xx + c) * np.cos((c + 2) * 2.0 * yy) for c in range(classes)]
    )
    noise = rng.normal(0, 0.25, size=(n, resolution, resolution))
    images = np.clip((protos[labels] + noise + 1.5) * 85, 0, 255).astype(np.uint8)[..., None]
    return ArraySource("synthetic", split, images, labels.astype(np.int64), classes)


def load_source(
    dataset: str, split: str, root: str = "", cache: str = "data/raw", download: bool = False
):
    """The raw split of `dataset` (see distcl.config.validate.DATASETS), as an indexable source.

    root: the dataset's folder; "" = its usual place (the Debian package for Fashion-MNIST,
    `cache` for CIFAR and STL-10; an ImageFolder tree has no default). download: fetch CIFAR or
    STL-10 into root when the files are missing (never done unless asked).
    """
    from distcl.config.validate import DATASETS

    if dataset == "fashion_mnist":
        return fashion_mnist(split, root, cache)
    if dataset == "synthetic":
        return synthetic(split)
    if dataset in ("cifar10", "cifar100"):
        from distcl.data.native import cifar

        return cifar(dataset, split, Path(root or cache), download)
    if dataset == "stl10":
        from distcl.data.native import stl10

        return stl10(split, Path(root or cache), download)
    if dataset == "imagefolder":
        from distcl.data.imagefolder import ImageFolderSource

        return ImageFolderSource(root, split)
    raise DataError(f"unknown dataset {dataset!r}; valid names: {', '.join(DATASETS)}")
