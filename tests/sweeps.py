"""The tiny sweep the `distcl sweep` tests share: its fixed overrides, space files and arguments."""

from __future__ import annotations

from pathlib import Path

import yaml

TINY = [
    "model.width=4",
    "model.feat_dim=0",  # 8 x width: the tiny net
    "model.proj_hidden=32",
    "model.proj_dim=16",
    "train.global_batch=64",
    "train.num_workers=1",
    "eval.knn_train_images=0",
    "eval.baselines=false",
    "data.max_images=256",
    "optim.warmup_epochs=0",
    "train.time_budget_s=0",  # the default preset's budget is for make train
    "eval.semi=false",  # as in the shipped spaces: trials skip fine-tuning, t-SNE and the model
    "eval.tsne_points=0",
    "tracking.log_model=false",
]


def write_space(path: Path, **doc) -> Path:
    path.write_text(yaml.safe_dump(doc))
    return path


def sweep_args(betons: Path, tmp: Path, space: Path, *extra: str) -> list[str]:
    return [
        "--space",
        str(space),
        "--storage-path",
        str(tmp / "sweeps"),
        "--name",
        "s1",
        f"data.beton_dir={betons}",
        f"tracking.uri=sqlite:///{tmp / 'mlflow.db'}",
        *TINY,
        *extra,
    ]
