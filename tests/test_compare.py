"""`distcl compare` on a local SQLite store: runs, baselines, Δ values, files and report run.

The runs are logged through distcl.tracking.core into a real SQLite MLflow store with chosen
metrics, so every expected Δ is known exactly (the table itself: distcl/report/table.py). The
server end to end is in test_tracking.py.
"""

from __future__ import annotations

import csv

import pytest

from distcl.report import compare, table
from distcl.tracking import core as tracking

EXP = "distcl-compare-test"
SPLIT = {"split": "fashion_mnist-train", "test_split": "fashion_mnist-test"}


def _run(uri, name, tags, metrics, params=None, status="FINISHED", experiment=EXP):
    logger = tracking.start_run(uri, experiment, name, params or {}, tags, system_metrics=False)
    logger.log_metrics(metrics, step=1)
    logger.end(status)
    return logger.run_id


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    uri = f"sqlite:///{tmp_path_factory.mktemp('compare')}/mlflow.db"
    arch = {"arch": "small_cnn-w16", **SPLIT}
    baseline = {"role": "baseline"}
    rows = {  # key: (run name, tags, metrics[, params]), one run a line
        "a": ("simclr-ntxent-b512", {"role": "method", "method": "simclr", "loss": "ntxent", **arch},
              {"knn_acc": 0.85, "linear_acc": 0.87, "semi_1pct_acc": 0.70, "semi_10pct_acc": 0.80},
              {"train.global_batch": 512, "loss.temperature": 0.3}),
        "b": ("supcon-b256", {"role": "method", "method": "supcon", "loss": "supcon", "arch": "resnet18-cifar-stem", **SPLIT},
              {"knn_acc": 0.88, "linear_acc": 0.90}, {"train.global_batch": 256, "loss.temperature": 0.1}),
        "raw": ("baseline-raw_pixels", baseline | {"baseline": "raw_pixels", "dataset": "fashion_mnist", **SPLIT}, {"knn_acc": 0.84, "linear_acc": 0.844}),
        "rand": ("baseline-random_init", baseline | {"baseline": "random_init", **arch}, {"knn_acc": 0.78, "linear_acc": 0.80}),
        "sup": ("supervised-ce-b512", baseline | {"baseline": "supervised", "method": "supervised", **arch}, {"knn_acc": 0.90, "linear_acc": 0.915}),
        "ref": ("reference-human", baseline | {"baseline": "reference", "reference": "human", "metric": "linear_acc", "source": "README"}, {"linear_acc": 0.835}),
    }  # fmt: skip
    ids = {key: _run(uri, *row) for key, row in rows.items()}
    _run(uri, "compare-old", {"role": "report"}, {"linear_acc": 0.1})  # never a table row
    _run(
        uri, "crashed", {"role": "method", "method": "simclr"}, {"linear_acc": 0.2}, status="FAILED"
    )
    return uri, ids


def test_table_rows_and_deltas(store):
    uri, _ = store
    df = tracking.search_runs(uri, [tracking.find_experiment(uri, EXP).experiment_id])
    columns, rows, base_rows = table.build_table(df)
    assert columns[:9] == [
        "run",
        "method",
        "loss",
        "batch",
        "temperature",
        "kNN",
        "linear",
        "1%",
        "10%",
    ]
    assert set(columns[9:]) == {"Δ raw_pixels", "Δ random_init", "Δ supervised", "Δ human"}
    by_run = {r["run"]: r for r in rows}
    assert set(by_run) == {"simclr-ntxent-b512", "supcon-b256"}  # no report, no failed run
    a = by_run["simclr-ntxent-b512"]
    assert (a["method"], a["loss"], a["batch"], a["temperature"]) == (
        "simclr",
        "ntxent",
        "512",
        "0.3",
    )
    assert a["linear"] == pytest.approx(87.0) and a["1%"] == pytest.approx(70.0)
    assert a["Δ raw_pixels"] == pytest.approx(100 * (0.87 - 0.844))
    assert a["Δ random_init"] == pytest.approx(100 * (0.87 - 0.80))
    assert a["Δ supervised"] == pytest.approx(100 * (0.87 - 0.915))
    assert a["Δ human"] == pytest.approx(100 * (0.87 - 0.835))
    b = by_run["supcon-b256"]
    # Another architecture: random-init and supervised baselines of small_cnn do not apply.
    assert b["Δ random_init"] is None and b["Δ supervised"] is None and b["1%"] is None
    assert b["Δ raw_pixels"] == pytest.approx(100 * (0.90 - 0.844))
    assert {r["baseline"]: r["value"] for r in base_rows}["human"] == pytest.approx(83.5)


def test_main_writes_files_and_logs_a_report_run(store, tmp_path, capsys):
    uri, _ = store
    assert compare.main(["--tracking-uri", uri, "--experiment", EXP, "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "| simclr-ntxent-b512 | simclr | ntxent | 512 | 0.3 | 85.00 | 87.00 | 70.00" in printed
    with open(tmp_path / "compare.csv") as f:
        rows = {r["run"]: r for r in csv.DictReader(f)}
    assert float(rows["simclr-ntxent-b512"]["Δ raw_pixels"]) == pytest.approx(2.6)
    assert rows["supcon-b256"]["Δ supervised"] == ""
    assert (tmp_path / "compare.png").stat().st_size > 1000
    assert "+2.60" in (tmp_path / "compare.md").read_text()
    report = tracking.find_runs(uri, EXP, "tags.role = 'report'")[0]
    from mlflow.tracking import MlflowClient

    names = {a.path for a in MlflowClient(uri).list_artifacts(report.info.run_id)}
    assert names == {"compare.md", "compare.csv", "compare.png"}
    assert report.data.params["runs"] == "2"


def test_parent_mode_compares_only_the_children(store, tmp_path):
    uri, _ = store
    parent = _run(uri, "sweep", {"role": "sweep"}, {}, experiment="distcl-sweep-test")
    for i, acc in enumerate((0.5, 0.6)):
        _run(
            uri,
            f"trial-{i}",
            {"role": "method", "mlflow.parentRunId": parent, **SPLIT},
            {"linear_acc": acc},
            experiment="distcl-sweep-test",
        )
    _run(
        uri,
        "baseline-raw_pixels",
        {"role": "baseline", "baseline": "raw_pixels", **SPLIT},
        {"linear_acc": 0.4},
        experiment="distcl-sweep-test",
    )
    assert (
        compare.main(
            ["--tracking-uri", uri, "--parent", parent, "--out", str(tmp_path), "--no-log"]
        )
        == 0
    )
    with open(tmp_path / "compare.csv") as f:
        rows = {r["run"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"trial-0", "trial-1"}
    assert float(rows["trial-1"]["Δ raw_pixels"]) == pytest.approx(20.0)


def test_missing_experiment_names_the_fix(store, tmp_path, capsys):
    uri, _ = store
    assert (
        compare.main(["--tracking-uri", uri, "--experiment", "nope", "--out", str(tmp_path)]) == 2
    )
    assert "experiment 'nope' does not exist" in capsys.readouterr().out
