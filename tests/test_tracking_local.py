"""MLflow tracking against local SQLite stores: URIs and secrets, system metrics, resume, and
the baseline runs looked up in MLflow (distcl/tracking/core.py, uri.py, runs.py).

The same over HTTP, end to end, against a real `mlflow server`: test_tracking.py.
"""

from __future__ import annotations

import time

import pytest

from distcl.config import schema as config
from distcl.evaluation import baselines
from distcl.tracking import core as tracking

EXP = "distcl-fashion_mnist"


def test_resolve_uri_makes_sqlite_paths_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.resolve_uri("sqlite:///m.db") == f"sqlite:///{tmp_path}/m.db"
    assert tracking.resolve_uri("store") == f"sqlite:///{tmp_path}/store/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert tracking.resolve_uri("") == "http://127.0.0.1:5999"


def test_secrets_are_masked_in_params():
    flat = {
        "tracking.uri": "https://bob:hunter2@mlflow.example.com/?token=abc",
        "cloud.api_key": "sk-123",
        "train.epochs": 3,
    }
    safe = tracking.safe_params(flat)
    assert "hunter2" not in safe["tracking.uri"] and "abc" not in safe["tracking.uri"]
    assert safe["cloud.api_key"] == "***" and safe["train.epochs"] == 3


def test_system_metrics_are_sampled_for_a_client_created_run(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    logger = tracking.start_run(
        uri,
        "sysmetrics",
        "r",
        {"tracking.system_metrics": True, "tracking.system_metrics_interval": 0.5},
        {"role": "method"},
    )
    deadline = time.time() + 60
    while time.time() < deadline and not any(
        k.startswith("system/") for k in tracking.get_run(uri, logger.run_id).data.metrics
    ):
        time.sleep(0.5)
    logger.end("FINISHED")
    metrics = tracking.get_run(uri, logger.run_id).data.metrics
    assert "system/cpu_utilization_percentage" in metrics
    assert "system/system_memory_usage_megabytes" in metrics


def test_resume_reopens_a_failed_run_and_samples_system_metrics_again(tmp_path):
    from distcl.job import driver

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    off = config.load(None, ["tracking.system_metrics=false"])
    first = driver._open_tracking(off, uri, str(tmp_path), "run-1", {})
    first.end("FAILED")  # what `fit` does when training raises
    assert not any(
        k.startswith("system/") for k in tracking.get_run(uri, first.run_id).data.metrics
    )
    cfg = config.load(None, ["tracking.system_metrics_interval=0.5"])
    again = driver._open_tracking(cfg, uri, str(tmp_path), "run-1", {})  # `--resume`
    assert again.run_id == first.run_id
    assert tracking.get_run(uri, again.run_id).info.status == "RUNNING"
    deadline = time.time() + 60
    while time.time() < deadline and not any(
        k.startswith("system/") for k in tracking.get_run(uri, again.run_id).data.metrics
    ):
        time.sleep(0.5)
    again.end("FINISHED")
    assert "system/cpu_utilization_percentage" in tracking.get_run(uri, again.run_id).data.metrics


def test_baselines_come_from_disk_cache_then_from_mlflow(tiny_betons, tmp_path):
    import shutil

    for f in ("fashion_mnist-train.beton", "fashion_mnist-test.beton"):
        for suffix in ("", ".json"):
            shutil.copy(tiny_betons / (f + suffix), tmp_path / (f + suffix))
    cfg = config.load(None, [f"data.beton_dir={tmp_path}", "eval.knn_k=5"])
    data = {
        "train_eval_path": str(tmp_path / "fashion_mnist-train.beton"),
        "test_path": str(tmp_path / "fashion_mnist-test.beton"),
        "meta": {"channels": 1},
    }
    first = baselines.raw_pixels(cfg, data, "", "")  # no tracking: computed, cached on disk
    assert first.source == "computed" and 0 <= first.metrics["linear_acc"] <= 1
    uri = f"sqlite:///{tmp_path}/fresh/mlflow.db"
    (tmp_path / "fresh").mkdir()
    logged = baselines.raw_pixels(cfg, data, uri, "exp")  # fresh store: no recompute
    assert logged.source == "disk cache" and logged.metrics == first.metrics and logged.run_id
    again = baselines.raw_pixels(cfg, data, uri, "exp")
    assert (again.source, again.run_id) == ("mlflow", logged.run_id)
    assert again.metrics["linear_acc"] == first.metrics["linear_acc"]
    other_k = config.load(None, [f"data.beton_dir={tmp_path}", "eval.knn_k=7"])
    assert baselines.raw_pixels(other_k, data, "", "").source == "computed"  # the key changed


def test_supervised_baseline_is_looked_up_by_arch_and_split(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cfg = config.load(None, ["model.width=16"])
    data = {
        "train_eval_path": "d/fashion_mnist-train.beton",
        "test_path": "d/fashion_mnist-test.beton",
    }
    tags = {
        "role": "baseline",
        "baseline": "supervised",
        "method": "supervised",
        "dataset": "fashion_mnist",
        **baselines.split_tags(data),
    }
    wider = baselines.arch_key(config.load(None, ["model.width=32"]))
    for arch, acc in ((baselines.arch_key(cfg), 0.91), (wider, 0.93)):
        logger = tracking.start_run(
            uri, EXP, "sup", {}, {**tags, "arch": arch}, system_metrics=False
        )
        logger.log_metrics({"linear_acc": acc, "knn_acc": acc - 0.01}, step=1)
        logger.end("FINISHED")
    found = baselines.supervised(cfg, data, uri, EXP)
    assert found.metrics == {"linear_acc": 0.91, "knn_acc": pytest.approx(0.90)}
    other = config.load(None, ["model.width=8"])
    assert baselines.supervised(other, data, uri, EXP) is None
