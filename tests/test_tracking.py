"""MLflow tracking: one real run over HTTP end to end (URIs, secrets, system metrics and the
baseline lookup against SQLite stores are in test_tracking_local.py).

It uses the session's `server_fit` (conftest.py: the tiny config trained once, in process,
against the `mlflow_server` fixture, a real `mlflow server` with SQLite; the browser test in
test_mlflow_ui.py reads the same run), then checks what it wrote: the summary JSON, a loadable
checkpoint, tags, params, metrics, system metrics, artifacts, the encoder loaded back with
`mlflow.pytorch.load_model`, the baseline runs and their reuse, `distcl compare`'s Δ values
and `distcl eval --run ... --dataset B`.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from distcl import __version__
from distcl.evaluation import baselines
from distcl.evaluation import cli as eval_cli
from distcl.report import compare
from distcl.tracking import core as tracking

EXP = "distcl-fashion_mnist"


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
    from distcl.data.prepare import prepare_data

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
