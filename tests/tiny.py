"""The tiny end-to-end training config that the slow tests share."""

from __future__ import annotations

from pathlib import Path


def tiny_overrides(betons: Path, tmp: Path, *extra: str) -> list[str]:
    """One epoch of the tiny net on the tiny `.beton`s; runs and MLflow under `tmp`.

    Later overrides win, so `extra` can replace any of these (e.g. `tracking.uri`).
    """
    return [
        f"data.beton_dir={betons}",
        "model.width=8",
        "model.feat_dim=0",  # 8 x width: the tiny net
        "model.proj_hidden=64",
        "model.proj_dim=32",
        "train.global_batch=128",
        "train.epochs=1",
        "train.time_budget_s=0",  # the default preset's budget is for make train
        "eval.knn_every=1",
        "eval.semi_steps=5",
        "eval.tsne_points=100",
        "eval.knn_train_images=0",
        f"train.storage_path={tmp / 'runs'}",
        f"tracking.uri=sqlite:///{tmp / 'mlflow.db'}",
        *extra,
    ]
