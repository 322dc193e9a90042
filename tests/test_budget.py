"""Time budget: the planner on measured costs, and a real run that must end near its budget
with its learning-rate schedule finished and its plan stored for a resume."""

from __future__ import annotations

import pytest

from distcl.config import schema as config
from distcl.runtime import checkpoint
from distcl.tracking import core as tracking
from distcl.train import budget
from distcl.train.budget import EpochCosts, knn_epochs, plan_epochs, planned_seconds
from tests.tiny import tiny_overrides

COSTS = EpochCosts(spent_s=20.0, done=1, step_s=0.5, steps_per_epoch=20, epoch_end_s=1.0, knn_s=3.0)


def test_knn_epochs_counts_every_nth_and_the_last():
    assert knn_epochs(1, 3) == 0  # epoch 1's pass is part of spent_s
    assert knn_epochs(5, 3) == 2  # epochs 3 and 5
    assert knn_epochs(6, 3) == 2  # 3 and 6
    assert knn_epochs(4, 0) == 1  # only the last


def test_the_plan_is_the_most_epochs_that_fit():
    # epoch 1: 20 s; each later epoch 0.5 x 20 + 1 = 11 s; kNN (every 3rd and the last) 3 s
    assert planned_seconds(3, COSTS, 3) == 20 + 2 * 11 + 3
    assert plan_epochs(45.0, COSTS, max_epochs=50, knn_every=3) == 3
    assert plan_epochs(44.9, COSTS, max_epochs=50, knn_every=3) == 2  # 2: 20 + 11 + 3 = 34
    assert plan_epochs(10.0, COSTS, max_epochs=50, knn_every=3) == 1  # at least one
    assert plan_epochs(1e6, COSTS, max_epochs=7, knn_every=3) == 7  # train.epochs caps it
    assert knn_epochs(6, 3, done=3) == 1  # only 6: 3 is done
    later = EpochCosts(**{**COSTS.__dict__, "spent_s": 55.0, "done": 3})
    assert plan_epochs(69.0, later, max_epochs=50, knn_every=3) == 4  # 55 + 11 + 3 (last: kNN)
    assert plan_epochs(10.0, later, max_epochs=50, knn_every=3) == 3  # never below done
    line = budget.describe(45.0, 3, COSTS, 3, 256)
    assert "budget 45 s: 3 epoch(s) of 20 steps at 512 img/s, predicted 45 s" in line


def test_a_negative_budget_is_refused():
    with pytest.raises(config.ConfigError, match="train.time_budget_s=-1.0 is negative"):
        config.load(None, ["train.time_budget_s=-1"])


BUDGET_S = 60.0


@pytest.mark.slow
def test_a_60_s_budget_ends_near_it_with_the_schedule_finished(
    ray_session, tiny_betons, tmp_path, mlflow_server
):
    from distcl.job.driver import fit

    cfg = config.load(
        None,
        tiny_overrides(
            tiny_betons,
            tmp_path,
            f"train.time_budget_s={BUDGET_S}",
            "train.epochs=500",  # the most a budget may plan
            "train.global_batch=64",
            "eval.knn_every=0",
            "eval.probe=false",
            "eval.baselines=false",
            "eval.semi=false",
            "eval.tsne_points=0",
            "tracking.log_model=false",
            "tracking.system_metrics=false",
            f"tracking.uri={mlflow_server}",
        ),
    )
    summary = fit(cfg)
    run = tracking.get_run(mlflow_server, summary["mlflow_run_id"])
    planned = int(run.data.params["budget_epochs"])
    assert 2 <= planned < 500
    logger = tracking.RunLogger(mlflow_server, run.info.run_id)
    losses, lrs, elapsed = (
        sorted(logger.metric_history(k)) for k in ("loss", "lr", "train_elapsed_s")
    )
    assert [s for s, _ in losses] == list(range(1, planned + 1))  # every planned epoch ran
    assert abs(elapsed[-1][1] - BUDGET_S) <= 0.1 * BUDGET_S, (elapsed[-1], planned)
    assert lrs[-1][1] <= 0.02 * max(v for _, v in lrs)  # the cosine reached its floor
    state = checkpoint.load(summary["checkpoint"])
    assert state["budget_epochs"] == planned and state["epoch"] == planned  # kept for a resume
