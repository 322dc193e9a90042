"""MLflow tracking: URIs and secrets, system metrics, and one real run over HTTP end to end.

The end-to-end part uses the session's `server_fit` (conftest.py: the tiny config trained once,
in process, against the `mlflow_server` fixture, a real `mlflow server` with SQLite; the browser
test in test_mlflow_ui.py reads the same run), then checks what it wrote: the summary JSON, a loadable
checkpoint, tags, params, metrics, system metrics, artifacts, the encoder loaded back with
`mlflow.pytorch.load_model`, the baseline runs and their reuse, `distcl compare`'s Δ values
and `distcl eval --run ... --dataset B`.
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import pytest
import torch

from distcl import __version__
from distcl.config import schema as config
from distcl.evaluation import baselines
from distcl.evaluation import cli as eval_cli
from distcl.report import compare
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
    from distcl import job as driver

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


@pytest.mark.slow
def test_train_writes_summary_json_and_a_loadable_checkpoint(server_fit):
    from distcl.runtime import checkpoint

    cfg, summary, client, run = server_fit
    written = json.loads((Path(cfg.train.storage_path).parent / "summary.json").read_text())
    assert written["mlflow_run_id"] == summary["mlflow_run_id"] == run.info.run_id
    assert written["linear_acc"] == summary["linear_acc"]
    assert 0.0 <= written["linear_acc"] <= 1.0 and "raw_pixels" in written["baselines"]
    state = checkpoint.load(summary["checkpoint"])
    assert int(state["epoch"]) == cfg.train.epochs == 1
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [1]


def _labels(tiny_betons):
    from distcl.evaluation.evaluate import raw_pixels

    return raw_pixels(str(tiny_betons / "fashion_mnist-train.beton"), 1)[1]


@pytest.mark.slow
def test_run_is_fully_tracked_over_http(server_fit, tiny_betons):
    from distcl.evaluation.evaluate import balanced_subset, subset_hash

    cfg, summary, client, run = server_fit
    assert run.info.status == "FINISHED" and run.info.run_name == "simclr-ntxent-b128"
    assert client.get_experiment(run.info.experiment_id).name == EXP
    tags = run.data.tags
    assert (tags["method"], tags["loss"], tags["dataset"], tags["role"]) == (
        "simclr",
        "ntxent",
        "fashion_mnist",
        "method",
    )
    assert tags["distcl_version"] == __version__ and tags["world_size"] == "2"
    assert tags["git_commit"] and tags["arch"].startswith("small_cnn-w8-")
    assert tags["split"] == "fashion_mnist-train" and tags["encoder_model_uri"].startswith(
        "models:/"
    )
    params = run.data.params
    assert all(params[k] == str(v) for k, v in cfg.to_flat().items())
    labels = _labels(tiny_betons)
    assert params["semi.1pct.indices_sha256"] == subset_hash(balanced_subset(labels, 0.01))
    assert params["semi.10pct.labels"] == str(len(balanced_subset(labels, 0.1)))
    m = run.data.metrics
    for key in (
        "loss",
        "lr",
        "images_per_s",
        "data_wait_frac",
        "knn_acc",
        "linear_acc",
        "semi_1pct_acc",
        "semi_10pct_acc",
        "raw_pixels_linear_acc",
        "random_init_linear_acc",
    ):
        assert 0 <= m[key] and (key in ("loss", "lr", "images_per_s") or m[key] <= 1), key
    assert m["linear_acc"] == summary["linear_acc"]
    assert any(k.startswith("system/cpu") for k in m)
    assert [h.step for h in client.get_metric_history(run.info.run_id, "linear_acc")] == [1]


@pytest.mark.slow
def test_artifacts_and_encoder_load_back(server_fit, tiny_betons, monkeypatch):
    import mlflow
    import mlflow.pytorch

    from distcl.evaluation.evaluate import balanced_subset
    from distcl.evaluation.final import load_encoder
    from distcl.models.encoders import SmallCNN
    from distcl.runtime import checkpoint

    cfg, summary, client, run = server_fit
    rid = run.info.run_id
    top = {a.path for a in client.list_artifacts(rid)}
    assert {"config.yaml", "summary.json", "plots", "semi"} <= top
    assert {a.path for a in client.list_artifacts(rid, "plots")} == {
        "plots/curves.png",
        "plots/tsne.png",
    }
    png = client.download_artifacts(rid, "plots/tsne.png", str(summary["run_dir"]))
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    idx = client.download_artifacts(rid, "semi/indices_1pct.json", str(summary["run_dir"]))
    assert json.load(open(idx)) == balanced_subset(_labels(tiny_betons), 0.01).tolist()

    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "true")  # distcl pickles it
    monkeypatch.setenv("MLFLOW_TRACKING_URI", cfg.tracking.uri)
    mlflow.set_tracking_uri(cfg.tracking.uri)
    try:
        loaded = mlflow.pytorch.load_model(run.data.tags["encoder_model_uri"])
    finally:
        mlflow.set_tracking_uri(None)
    assert isinstance(loaded, SmallCNN)  # the nn.Module itself, not an exported graph
    state = checkpoint.load(summary["checkpoint"])
    trained = load_encoder(cfg, state, state["meta"])
    x = torch.randn(5, 1, 28, 28)  # another batch size than the input example's 2
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(x), trained(x))
    versions = client.search_model_versions("name = 'distcl-fashion_mnist-simclr'")
    assert any(v.run_id == rid for v in versions)


@pytest.mark.slow
def test_baseline_runs_are_logged_once_and_reused(server_fit, tiny_betons):
    from distcl.job import prepare_data

    cfg, summary, client, run = server_fit
    flt = "tags.role = 'baseline' and tags.split = 'fashion_mnist-train'"
    found = tracking.find_runs(cfg.tracking.uri, EXP, flt)
    kinds = sorted(r.data.tags["baseline"] for r in found)
    assert kinds == ["random_init", "raw_pixels"]
    refs = tracking.find_runs(cfg.tracking.uri, EXP, "tags.baseline = 'reference'")
    assert {r.data.tags["reference"] for r in refs} == {"human", "cnn2_sup", "resnet18_sup"}
    raw = next(r for r in found if r.data.tags["baseline"] == "raw_pixels")
    assert run.data.metrics["raw_pixels_linear_acc"] == raw.data.metrics["linear_acc"]
    again = baselines.all_baselines(cfg, prepare_data(cfg), cfg.tracking.uri, EXP)
    assert [b.source for b in again[:2]] == ["mlflow", "mlflow"]
    assert len(tracking.find_runs(cfg.tracking.uri, EXP, "tags.role = 'baseline'")) == len(
        found
    ) + len(refs)
    cached = (
        tiny_betons / "baselines" / "raw_pixels-pixels-fashion_mnist-train-fashion_mnist-test.json"
    )
    assert cached.is_file()


@pytest.mark.slow
def test_compare_reports_deltas_against_each_baseline(server_fit, tmp_path):
    cfg, summary, client, run = server_fit
    assert compare.main(["--tracking-uri", cfg.tracking.uri, "--out", str(tmp_path)]) == 0
    with open(tmp_path / "compare.csv") as f:
        row = next(r for r in csv.DictReader(f) if r["run_id"] == run.info.run_id)
    lin = run.data.metrics["linear_acc"]
    base = {
        r.data.tags.get("reference") or r.data.tags["baseline"]: r.data.metrics
        for r in tracking.find_runs(cfg.tracking.uri, EXP, "tags.role = 'baseline'")
    }
    for name in ("raw_pixels", "random_init", "human", "cnn2_sup", "resnet18_sup"):
        assert float(row[f"Δ {name}"]) == pytest.approx(100 * (lin - base[name]["linear_acc"]))
    assert float(row["linear"]) == pytest.approx(100 * lin)
    report = tracking.find_runs(cfg.tracking.uri, EXP, "tags.role = 'report'")[0]
    assert {a.path for a in client.list_artifacts(report.info.run_id)} == {
        "compare.md",
        "compare.csv",
        "compare.png",
    }


@pytest.mark.slow
def test_eval_run_transfers_to_another_dataset(server_fit, tmp_path):
    cfg, summary, client, run = server_fit
    argv = [
        "--run",
        run.info.run_id,
        "--tracking-uri",
        cfg.tracking.uri,
        "--what",
        "transfer",
        "--dataset",
        "synthetic",
        "--beton-dir",
        str(tmp_path),
    ]
    assert eval_cli.main(argv) == 0
    history = client.get_metric_history(run.info.run_id, "transfer_synthetic_linear_acc")
    assert [h.step for h in history] == [cfg.train.epochs]
    assert 0.4 < history[0].value <= 1.0  # 4 synthetic classes: chance is 0.25
    assert (tmp_path / "synthetic-train.beton").is_file()
