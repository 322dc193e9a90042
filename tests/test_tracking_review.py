"""What the MLflow UI shows a reviewer (distcl/tracking/review.py), against SQLite stores.

The experiment's kind tag, the `.beton`s as dataset inputs, the run's description, one registry
version per finished method run (none for baselines or sweep trials), and the compare table as
the experiment's description (distcl/report/experiment.py). The same things over HTTP, in a
real browser: test_mlflow_ui.py.
"""

from __future__ import annotations

import json
import os

import numpy as np
import torch
from mlflow.tracking import MlflowClient

from distcl.config import schema as config
from distcl.job import driver
from distcl.report import compare
from distcl.report import experiment as report_experiment
from distcl.tracking import core as tracking
from distcl.tracking import review as tracking_review

EXP = "distcl-fashion_mnist"
RESULTS = {
    "linear_acc": 0.625,
    "knn_acc": 0.5,
    "semi_1pct_acc": 0.4,
    "baselines": {
        "raw_pixels": {"linear_acc": 0.55, "knn_acc": 0.52},
        "human": {"linear_acc": 0.835},
    },
    "baseline_kinds": {"raw_pixels": "computed", "human": "reference"},
}


def _data(betons) -> dict:
    return {
        "train_path": str(betons / "fashion_mnist-train.beton"),
        "train_eval_path": str(betons / "fashion_mnist-train.beton"),
        "test_path": str(betons / "fashion_mnist-test.beton"),
        "meta": {"channels": 1, "num_classes": 10, "resolution": 28, "count": 600},
    }


def test_experiments_are_marked_as_model_training(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    new = tracking.experiment_id(uri, EXP)  # created by distcl
    old = client.create_experiment("made-elsewhere")  # created without the tag
    assert tracking_review.KIND_TAG not in client.get_experiment(old).tags
    for _ in range(2):  # idempotent
        assert tracking.experiment_id(uri, "made-elsewhere") == old
    for exp_id in (new, old):
        tags = client.get_experiment(exp_id).tags
        assert tags[tracking_review.KIND_TAG] == "custom_model_development"
        view = json.loads(tags["mlflow.sharedViewState.distcl"])  # the runs table's columns
        assert "metrics.`linear_acc`" in view["selectedColumns"]


def test_run_has_its_betons_as_dataset_inputs(tiny_betons, tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    data = _data(tiny_betons)
    logger = driver._open_tracking(config.load(None, []), uri, str(tmp_path), "run-1", data)
    tracking_review.log_datasets(logger, data)  # a second time (a resume): nothing doubles
    inputs = MlflowClient(tracking_uri=uri).get_run(logger.run_id).inputs.dataset_inputs
    by_name = {i.dataset.name: i for i in inputs}
    assert sorted(by_name) == ["fashion_mnist-test", "fashion_mnist-train"]
    contexts = {n: {t.key: t.value for t in i.tags} for n, i in by_name.items()}
    assert contexts["fashion_mnist-train"]["mlflow.data.context"] == "training"
    assert contexts["fashion_mnist-test"]["mlflow.data.context"] == "evaluation"
    train = by_name["fashion_mnist-train"].dataset
    assert train.digest == tracking_review.beton_digest(data["train_path"])
    assert data["train_path"] in train.source and '"count": 600' in train.profile
    logger.end("FINISHED")


def test_digest_is_cheap_and_follows_the_file(tmp_path):
    beton = tmp_path / "x-train.beton"
    beton.write_bytes(b"0" * 100)
    (tmp_path / "x-train.beton.json").write_text('{"count": 1, "bytes": 100}')
    first = tracking_review.beton_digest(beton)
    assert first == tracking_review.beton_digest(beton) and len(first) == 8
    st = beton.stat()
    os.utime(beton, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # rewritten: a new digest
    assert tracking_review.beton_digest(beton) != first


def _method_run(uri: str, cfg, role: str = "method"):
    logger = tracking.start_run(uri, EXP, cfg.run_name, {}, {"role": role}, system_metrics=False)
    example = np.zeros((2, 4), dtype=np.float32)
    tracking.log_encoder(logger, torch.nn.Linear(4, 2), example)
    return logger


def test_description_and_one_registry_version_per_method_run(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cfg = config.load(None, ["train.global_batch=128"])
    assert cfg.tracking.register  # on by default
    client = MlflowClient(tracking_uri=uri)
    name = tracking_review.registered_name(cfg)
    runs = [_method_run(uri, cfg) for _ in range(2)]
    for logger in runs:
        tracking_review.finish_review(logger, cfg, RESULTS)
    note = client.get_run(runs[0].run_id).data.tags[tracking_review.NOTE_TAG]
    first = note.splitlines()[0]
    assert first.startswith("simclr-ntxent-b128 (simclr, ntxent, batch 128")
    assert "linear 62.50%, kNN 50.00%" in first
    assert "raw_pixels: linear +7.50 pts, kNN -2.00 pts" in first
    assert "human: linear -21.00 pts" in first and "plots/tsne.png" in note
    versions = sorted(client.search_model_versions(f"name = '{name}'"), key=lambda v: v.version)
    assert [v.run_id for v in versions] == [r.run_id for r in runs]
    assert [int(v.version) for v in versions] == [1, 2]
    assert versions[0].tags["linear_acc"] == "0.6250" and "62.50%" in versions[0].description
    assert client.get_run(runs[1].run_id).data.tags["registered_model"] == f"{name}/2"
    model_id = client.get_run(runs[0].run_id).data.tags["encoder_model_uri"].split("/")[-1]
    model = client.get_logged_model(model_id)  # in the run's experiment, not in Default
    assert model.experiment_id == runs[0].experiment_id != "0"

    off = config.load(None, ["tracking.register=false"])
    for cfg_, role in ((cfg, "baseline"), (cfg, "sweep-trial"), (off, "method")):
        logger = _method_run(uri, cfg_, role)
        assert tracking_review.register_encoder(logger, cfg_, RESULTS) is None
    assert len(client.search_model_versions(f"name = '{name}'")) == 2


def test_experiment_description_holds_the_compare_table(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    split = {"split": "fashion_mnist-train"}
    runs = (
        ("simclr-ntxent-b128", {"role": "method", "method": "simclr", **split}, 0.625),
        ("raw_pixels", {"role": "baseline", "baseline": "raw_pixels", **split}, 0.55),
    )
    for name, tags, acc in runs:
        logger = tracking.start_run(uri, EXP, name, {}, tags, system_metrics=False)
        logger.log_metrics({"linear_acc": acc, "knn_acc": acc - 0.1}, step=1)
        logger.end("FINISHED")
    exp_id = tracking.find_experiment(uri, EXP).experiment_id
    client = MlflowClient(tracking_uri=uri)
    report_experiment.after_run(uri, exp_id, logger.run_id)
    note = client.get_experiment(exp_id).tags[tracking_review.NOTE_TAG]
    assert "best linear probe: simclr-ntxent-b128 62.50% (Δ raw_pixels +7.50 pts)" in note
    assert "| run | method |" in note and "Δ raw_pixels" in note
    assert "| simclr-ntxent-b128 | simclr |" in note and "+7.50" in note
    assert compare.main(["--tracking-uri", uri, "--out", str(tmp_path / "out")]) == 0
    note = client.get_experiment(exp_id).tags[tracking_review.NOTE_TAG]
    report = tracking.find_runs(uri, EXP, "tags.role = 'report'")[0]
    assert f"runs/{report.info.run_id}/artifacts" in note and "+7.50" in note


def test_review_link_opens_the_training_view():
    link = tracking_review.ui_link("http://127.0.0.1:5000/", "3", "abc")
    assert link == "http://127.0.0.1:5000/#/experiments/3/runs/abc?workflowType=machine_learning"
    runs = tracking_review.ui_link("http://127.0.0.1:5000", "3")
    assert runs.endswith(
        "/#/experiments/3/runs?workflowType=machine_learning&viewStateShareKey=distcl"
    )
    assert "mlflow ui --backend-store-uri sqlite:///x.db" in tracking_review.ui_link(
        "sqlite:///x.db", "3"
    )
