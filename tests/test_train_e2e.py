"""End to end: `distcl train` on a few hundred images through Ray Train, FFCV and MLflow."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from distcl import config

pytestmark = pytest.mark.slow


def tiny_overrides(betons: Path, tmp: Path, *extra: str) -> list[str]:
    return [
        f"data.beton_dir={betons}",
        "model.width=8",
        "model.feat_dim=0",  # 8 x width: the tiny net
        "model.proj_hidden=64",
        "model.proj_dim=32",
        "train.global_batch=128",
        "train.epochs=1",
        "eval.knn_every=1",
        "eval.semi_steps=5",
        "eval.tsne_points=100",
        "eval.knn_train_images=0",
        f"train.storage_path={tmp / 'runs'}",
        f"tracking.uri=sqlite:///{tmp / 'mlflow.db'}",
        *extra,
    ]


def test_train_logs_run_metrics_params_and_checkpoint(ray_session, tiny_betons, tmp_path):
    from mlflow.tracking import MlflowClient

    from distcl.driver import fit

    cfg = config.load(None, tiny_overrides(tiny_betons, tmp_path))
    summary = fit(cfg, summary_json=str(tmp_path / "summary.json"))

    written = json.loads((tmp_path / "summary.json").read_text())
    assert written["mlflow_run_id"] == summary["mlflow_run_id"]
    assert 0.0 <= written["linear_acc"] <= 1.0 and "raw_pixels" in written["baselines"]
    assert (Path(summary["checkpoint"]) / "state.pt").is_file()

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.get_run(summary["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["train.global_batch"] == "128"
    assert run.data.params["loss.name"] == "ntxent"
    assert run.data.tags["method"] == "simclr" and run.data.tags["world_size"] == "2"
    for key in ("loss", "lr", "images_per_s", "knn_acc", "linear_acc", "raw_pixels_linear_acc"):
        assert key in run.data.metrics, key
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [1]
    assert "config.yaml" in {a.path for a in client.list_artifacts(run.info.run_id)}
