"""The `.beton`s one run reads, written once and reused: its train split, the labelled split the
kNN bank and probes use, and the test split. Shared by `distcl train`, `distcl sweep` (once per
sweep, before any trial) and `distcl eval`, so all three read the same files."""

from __future__ import annotations

from typing import Any

from distcl.config.names import TEXT_DATASETS
from distcl.config.schema import Config, ConfigError
from distcl.data import beton


def prepare_data(cfg: Config) -> dict[str, Any]:
    """Write (or reuse) the train and test `.beton`s; returns their paths and the dataset facts."""
    d = cfg.data
    if d.dataset in TEXT_DATASETS:
        return prepare_text(cfg)
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


def prepare_text(cfg: Config) -> dict[str, Any]:
    """WordNet's pair `.beton`s (distcl/data/text_beton.py): the train split trains and gives
    the probe its training definitions; the held-out synsets are the test split. `meta` says
    `modality: text`; `resolution` holds the tokens per text."""
    from distcl.data.text_beton import prepare_wordnet, read_text_meta
    from distcl.data.wordnet import LEXNAMES

    paths = prepare_wordnet(cfg.data.beton_dir, root=cfg.data.root or None)
    meta = read_text_meta(paths["train"])
    train = str(paths["train"].resolve())
    return {
        "train_path": train,
        "train_eval_path": train,
        "test_path": str(paths["test"].resolve()),
        "meta": {
            "modality": "text",
            "channels": 0,
            "num_classes": len(LEXNAMES),
            "resolution": meta["max_len"],
            "count": meta["count"],
        },
    }
