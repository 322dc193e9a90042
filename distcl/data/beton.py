"""Writing and checking FFCV `.beton` files.

Each `.beton` gets a sidecar `NAME.beton.json` with what was written (dataset, split, count,
resolution, channels, byte size). A file is reused only when the sidecar and the file agree, so
a truncated, corrupt or foreign `.beton` is caught before training starts.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from distcl.data.sources import DataError

FORMAT_VERSION = 1


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


def check_meta(path: Path, dataset: str, split: str) -> dict:
    meta = read_meta(path)
    if (meta.get("dataset"), meta.get("split")) != (dataset, split):
        raise DataError(
            f"{path} holds {meta.get('dataset')}/{meta.get('split')}, expected {dataset}/{split}. "
            f"Rebuild it with: {rebuild_hint(path)}"
        )
    return meta


def write_beton(
    source,
    path: Path,
    *,
    write_mode: str = "raw",
    max_resolution: int = 0,
    jpeg_quality: int = 90,
    num_workers: int = 1,
    max_images: int = 0,
) -> dict:
    """Write `source` to `path` atomically (temp file, then rename) with a progress bar.

    Images are stored as RGB (grey images replicated to 3 channels, since FFCV's image field is
    RGB); the loader keeps the first `channels` channels, recorded in the sidecar.
    """
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = min(len(source), max_images) if max_images else len(source)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    field = RGBImageField(
        write_mode=write_mode, max_resolution=max_resolution or None, jpeg_quality=jpeg_quality
    )
    writer = DatasetWriter(str(tmp), {"image": field, "label": IntField()}, num_workers=num_workers)
    try:
        writer.from_indexed_dataset(_RGBView(source, n), chunksize=256)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    meta = {
        "format": FORMAT_VERSION,
        "dataset": source.name,
        "split": source.split,
        "count": n,
        "resolution": source.resolution,
        "channels": source.channels,
        "num_classes": source.num_classes,
        "write_mode": write_mode,
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
    **write_kw,
) -> tuple[Path, dict, bool]:
    """Write the `.beton` for one split unless a valid one exists. Returns (path, meta, written).

    An existing but invalid file is rewritten when `rebuild_invalid` (what `distcl prepare`
    does), else refused with a DataError naming it (what `distcl train` does: it never
    overwrites a file it did not just write).
    """
    from distcl.data.sources import load_source

    path = beton_path(out, dataset, split, max_images)
    if not force:
        try:
            return path, check_meta(path, dataset, split), False
        except DataError:
            if path.exists() and not rebuild_invalid:
                raise
            if path.exists():
                print(f"distcl: {path} is not valid; rewriting it")
    source = load_source(dataset, split, root, cache=str(Path(out) / "raw"))
    meta = write_beton(source, path, max_images=max_images, **write_kw)
    return path, meta, True
