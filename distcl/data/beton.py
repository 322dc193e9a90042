"""Writing and checking FFCV `.beton` files.

Each `.beton` gets a sidecar `NAME.beton.json` with what was written (dataset, split, count,
stored image sides, channels, storage options, byte size). A file is reused only when the
sidecar and the file agree and it was written with the storage options asked for (write mode,
max_resolution, JPEG quality; for ImageFolder also the tree it came from), so a truncated,
corrupt, foreign or differently stored `.beton` is caught before training starts.

`resolution` in the sidecar is the stored side: the shorter side of every image when all have
one size (CIFAR: 32), else the median shorter side (an ImageFolder tree written with
`max_resolution`), with `uniform: false`; the eval loader then centre-crops to it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from distcl.data.sources import DataError

FORMAT_VERSION = 1
WRITE_MODES = ("raw", "jpg", "smart", "proportion")  # FFCV RGBImageField write modes
ALIASES = {"jpeg": "jpg"}  # accepted spellings of a write mode


def storage_options(
    write_mode: str = "raw", max_resolution: int = 0, jpeg_quality: int = 90
) -> dict:
    """The sidecar's record of how images are stored; equal dicts mean interchangeable files."""
    mode = ALIASES.get(write_mode, write_mode)
    if mode not in WRITE_MODES:
        raise DataError(f"storage {write_mode!r} is not one of: raw, jpeg, smart, proportion")
    if mode != "raw" and not 1 <= jpeg_quality <= 100:
        raise DataError(f"jpeg_quality must be in 1..100, got {jpeg_quality} (FFCV default 90)")
    return {
        "write_mode": mode,
        "max_resolution": int(max_resolution or 0),
        # JPEG quality matters only where JPEGs may be written
        "jpeg_quality": int(jpeg_quality) if mode != "raw" else 0,
    }


def beton_path(beton_dir: str, dataset: str, split: str, max_images: int = 0) -> Path:
    suffix = f"-first{max_images}" if max_images else ""
    return Path(beton_dir) / f"{dataset}-{split}{suffix}.beton"


def rebuild_hint(path: Path) -> str:
    dataset, _, split = path.stem.partition("-")
    split = split.split("-first")[0]
    return f"distcl prepare --dataset {dataset} --split {split} --out {path.parent} --force"


def read_meta(path: Path) -> dict:
    """The sidecar of a valid `.beton`, or DataError naming the file and how to rebuild it."""
    path = Path(path)
    meta_path = path.with_name(path.name + ".json")
    if not path.exists():
        raise DataError(f"{path} does not exist; create it with: {rebuild_hint(path)}")
    if not meta_path.exists():
        raise DataError(
            f"{path} has no {meta_path.name}: it was not written by distcl prepare, or the "
            f"write did not finish. Rebuild it with: {rebuild_hint(path)}"
        )
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError:
        raise DataError(f"{meta_path} is corrupt; rebuild with: {rebuild_hint(path)}") from None
    size = path.stat().st_size
    if meta.get("bytes") != size:
        raise DataError(
            f"{path} is {size} bytes but was written as {meta.get('bytes')} (truncated or "
            f"replaced). Rebuild it with: {rebuild_hint(path)}"
        )
    try:
        from ffcv.reader import Reader

        n = Reader(str(path)).num_samples
    except Exception as exc:  # ffcv raises assorted errors on a bad header
        raise DataError(
            f"{path} is not a readable .beton ({exc}); rebuild: {rebuild_hint(path)}"
        ) from None
    if n != meta.get("count"):
        raise DataError(f"{path} holds {n} images, sidecar says {meta.get('count')}; rebuild it")
    return meta


def check_meta(
    path: Path, dataset: str, split: str, storage: dict | None = None, root: str | None = None
) -> dict:
    """read_meta, then refuse a file of another dataset/split, storage or ImageFolder tree."""
    meta = read_meta(path)
    if (meta.get("dataset"), meta.get("split")) != (dataset, split):
        raise DataError(
            f"{path} holds {meta.get('dataset')}/{meta.get('split')}, expected {dataset}/{split}. "
            f"Rebuild it with: {rebuild_hint(path)}"
        )
    if storage is not None:
        # sidecars from before storage options were recorded: raw, full size, quality unused
        mode = meta.get("write_mode", "raw")
        have = {
            "write_mode": mode,
            "max_resolution": meta.get("max_resolution", 0),
            "jpeg_quality": meta.get("jpeg_quality", 0 if mode == "raw" else 90),
        }
        if have != storage:
            raise DataError(
                f"{path} was written with {_fmt(have)} but {_fmt(storage)} is asked for. To "
                f"use it, set {_overrides(have)}; or rebuild it with: {rebuild_hint(path)} "
                f"--write-mode {storage['write_mode']} --max-resolution "
                f"{storage['max_resolution']}"
                + (f" --jpeg-quality {storage['jpeg_quality']}" if storage["jpeg_quality"] else "")
            )
    if root is not None and dataset == "imagefolder" and meta.get("root") != _abs(root):
        raise DataError(
            f"{path} was written from the ImageFolder tree {meta.get('root')}, not {_abs(root)}. "
            f"Use another data.beton_dir per tree, or rebuild it with: {rebuild_hint(path)} "
            f"--root {root}"
        )
    return meta


def _fmt(storage: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in storage.items())


def _overrides(storage: dict) -> str:
    """The config overrides that ask for `storage`."""
    out = f"data.storage={storage['write_mode']} data.max_resolution={storage['max_resolution']}"
    return out + (
        f" data.jpeg_quality={storage['jpeg_quality']}" if storage["jpeg_quality"] else ""
    )


def _abs(root: str) -> str:
    return str(Path(root).resolve()) if root else ""


def _stored_sides(path: Path) -> dict:
    """Image sides as stored (after max_resolution), from the `.beton`'s own metadata table."""
    from ffcv.reader import Reader

    image = Reader(str(path)).metadata["f0"]  # field 0 = image: mode, width, height, data_ptr
    h, w = image["height"].astype(np.int64), image["width"].astype(np.int64)
    short = np.minimum(h, w)
    uniform = bool(len(h) and h.min() == h.max() and w.min() == w.max())
    return {
        "resolution": int(np.median(short)) if len(short) else 0,
        "uniform": uniform,
        "min_side": int(short.min()) if len(short) else 0,
        "max_side": int(np.maximum(h, w).max()) if len(h) else 0,
    }


def write_beton(
    source,
    path: Path,
    *,
    write_mode: str = "raw",
    max_resolution: int = 0,
    jpeg_quality: int = 90,
    num_workers: int = 1,
    max_images: int = 0,
    root: str = "",
) -> dict:
    """Write `source` to `path` atomically (temp file, then rename) with a progress bar.

    Images are stored as RGB (grey images replicated to 3 channels, since FFCV's image field is
    RGB); the loader keeps the first `channels` channels, recorded in the sidecar.
    write_mode: raw | jpg (or jpeg) | smart | proportion (FFCV's RGBImageField modes).
    max_resolution: shrink images whose longer side exceeds this (0 = keep their size).
    root: the raw dataset folder, recorded in the sidecar (checked for ImageFolder trees).
    """
    storage = storage_options(write_mode, max_resolution, jpeg_quality)
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = min(len(source), max_images) if max_images else len(source)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    field = RGBImageField(
        write_mode=storage["write_mode"],
        max_resolution=max_resolution or None,
        jpeg_quality=jpeg_quality,
    )
    writer = DatasetWriter(str(tmp), {"image": field, "label": IntField()}, num_workers=num_workers)
    print(f"distcl: writing {path} ({n} images, {_fmt(storage)})", flush=True)
    try:  # FFCV's writer shows a tqdm progress bar
        writer.from_indexed_dataset(_RGBView(source, n), chunksize=256)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    meta = {
        "format": FORMAT_VERSION,
        "dataset": source.name,
        "split": source.split,
        "count": n,
        **_stored_sides(path),
        "channels": source.channels,
        "num_classes": source.num_classes,
        **storage,
        "root": _abs(root),
        "bytes": path.stat().st_size,
    }
    meta_tmp = path.with_name(f".{path.name}.json.tmp")
    meta_tmp.write_text(json.dumps(meta, indent=1))
    os.replace(meta_tmp, path.with_name(path.name + ".json"))
    return meta


class _RGBView:
    """Indexable view giving FFCV's writer `(H x W x 3 uint8, label)` tuples."""

    def __init__(self, source, n: int):
        self.source, self.n = source, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        image, label = self.source[i]
        if image.ndim == 2:
            image = image[..., None]
        if image.shape[2] == 1:
            image = np.repeat(image, 3, axis=2)
        return np.ascontiguousarray(image), int(label)


def prepare(
    dataset: str,
    split: str,
    *,
    root: str = "",
    out: str = "data",
    force: bool = False,
    max_images: int = 0,
    rebuild_invalid: bool = True,
    download: bool = False,
    write_mode: str = "raw",
    max_resolution: int = 0,
    jpeg_quality: int = 90,
    num_workers: int = 1,
) -> tuple[Path, dict, bool]:
    """Write the `.beton` for one split unless a valid one exists. Returns (path, meta, written).

    An existing file that is invalid or stored with other options is rewritten when
    `rebuild_invalid` (what `distcl prepare` does), else refused with a DataError naming it
    (what `distcl train` does: it never overwrites a file it did not just write).
    download: let CIFAR/STL-10 readers fetch missing files (only when the user asks).
    """
    from distcl.data.sources import load_source

    path = beton_path(out, dataset, split, max_images)
    storage = storage_options(write_mode, max_resolution, jpeg_quality)
    if not force:
        try:
            return path, check_meta(path, dataset, split, storage, root), False
        except DataError:
            if path.exists() and not rebuild_invalid:
                raise
            if path.exists():
                print(f"distcl: {path} is not valid; rewriting it")
    source = load_source(dataset, split, root, cache=str(Path(out) / "raw"), download=download)
    meta = write_beton(
        source,
        path,
        max_images=max_images,
        num_workers=num_workers,
        root=root,
        **storage,
    )
    return path, meta, True
