"""`distcl sweep` end to end: Ray Tune trials that each run a Ray Train job, on tiny .betons.

The tiny synthetic data saturates kNN accuracy at 1.0 for every trial (ties: ASHA stops none),
so the ASHA sweep ranks by the training loss instead: the same scheduler path as
`metric: knn_acc`, with clear losers (the sigmoid loss sits near 2x NT-Xent's after one epoch).
"""

from __future__ import annotations

import time

import pytest

from distcl.config import schema as config
from tests.sweeps import sweep_args, write_space


@pytest.fixture(scope="module")
def asha_sweep(ray_session, tiny_betons, tmp_path_factory):
    from distcl.sweep import run as sweep

    tmp = tmp_path_factory.mktemp("sweep")
    space = write_space(
        tmp / "space.yaml",
        search="grid",
        metric="loss",
        mode="min",
        max_concurrent=2,
        params={
            "loss.temperature": {"grid": [0.3, 1000.0]},
            "loss.name": {"grid": ["ntxent", "logistic"]},
        },
        asha={"grace_period": 1, "reduction_factor": 4, "max_t": 3},
    )
    args = sweep.build_parser().parse_args(
        sweep_args(tiny_betons, tmp, space, "train.cpus_per_worker=0.5")
    )
    t0 = time.perf_counter()
    summary = sweep.run_sweep(args)
    print(f"ASHA sweep of 4 trials: {time.perf_counter() - t0:.0f} s")
    return tmp, summary


@pytest.mark.slow
def test_sweep_completes_and_asha_stops_a_bad_trial(asha_sweep):
    tmp, summary = asha_sweep
    assert summary["trials"] == 4
    epochs = {r["trial_id"]: r["epochs"] for r in summary["rows"]}
    assert sorted(epochs.values())[0] < 3 and max(epochs.values()) == 3, epochs
    assert summary["stopped_early"] >= 1
    best = summary["best"]
    assert best["status"] == "finished" and best["epochs"] == 3
    assert best["loss"] == min(r["loss"] for r in summary["rows"] if r["status"] == "finished")


@pytest.mark.slow
def test_mlflow_has_parent_and_one_child_per_trial(asha_sweep):
    from mlflow.tracking import MlflowClient

    tmp, summary = asha_sweep
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp / 'mlflow.db'}")
    parent = client.get_run(summary["parent_run_id"])
    assert parent.data.tags["role"] == "sweep" and parent.info.status == "FINISHED"
    children = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'",
    )
    assert len(children) == 4
    assert {c.data.tags["trial_id"] for c in children} == {r["trial_id"] for r in summary["rows"]}
    assert all(c.data.tags["role"] == "sweep-trial" for c in children)
    finished = [c for c in children if c.info.status == "FINISHED"]
    assert finished and all("linear_acc" in c.data.metrics for c in finished)
    assert all(len(client.get_metric_history(c.info.run_id, "loss")) >= 1 for c in children)
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {
        "trials.md",
        "trials.csv",
        "accuracy_vs_temperature.png",
        "best_config.yaml",
    } <= artifacts


@pytest.mark.slow
def test_best_config_trains(asha_sweep, tmp_path):
    from distcl.job.driver import fit

    _, summary = asha_sweep
    cfg = config.load(
        summary["best_config"],
        [
            "train.epochs=1",
            f"train.storage_path={tmp_path}",
            f"tracking.uri=sqlite:///{tmp_path / 'm.db'}",
        ],
    )
    assert cfg.loss.name == summary["best"]["loss.name"] and cfg.model.width == 4
    assert cfg.loss.temperature == summary["best"]["loss.temperature"]
    assert 0.0 <= fit(cfg)["knn_acc"] <= 1.0
