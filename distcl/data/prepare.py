"""The `.beton`s one run reads, written once and reused: its train split, the labelled split the
kNN bank and probes use, and the test split. Shared by `distcl train`, `distcl sweep` (once per
sweep, before any trial) and `distcl eval`, so all three read the same files."""

from __future__ import annotations

from typing import Any

from distcl.config.schema import Config, ConfigError
from distcl.data import beton


def prepare_data(cfg: Config) -> dict[str, Any]:
    """Write (or reuse) the train and test `.beton`s; returns their paths and the dataset facts."""
    d = cfg.data
    kw = {
        "root": d.root,
        "out": d.beton_dir,
        "rebuild_invalid": False,
        "download": d.download,
        "write_mode": d.storage,
        "max_resolution": d.max_resolution,
        "jpeg_quality": d.jpeg_quality,
    }
    train_path, meta, _ = beton.prepare(d.dataset, d.split, max_images=d.max_images, **kw)
    # kNN bank and probe need labels: STL-10's unlabeled images have none
    eval_split = "train" if "unlabeled" in d.split else d.split
    train_eval_path, _, _ = beton.prepare(d.dataset, eval_split, max_images=d.max_images, **kw)
    test_path, _, _ = beton.prepare(d.dataset, "test", **kw)
    if d.resolution > meta["resolution"]:
        raise ConfigError(
            f"data.resolution={d.resolution} is larger than the stored images ({meta['resolution']}"
            f" px in {train_path}); use data.resolution<={meta['resolution']}, or re-run distcl "
            "prepare with a larger --max-resolution"
        )
    return {
        "train_path": str(train_path.resolve()),
        "train_eval_path": str(train_eval_path.resolve()),
        "test_path": str(test_path.resolve()),
        "meta": {k: meta[k] for k in ("channels", "num_classes", "resolution", "count")},
    }
