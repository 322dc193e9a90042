"""Time budget: the planner on measured costs, its revisions and clock, and a real run that must
end near its budget with its learning-rate schedule finished, its plan stored, and a resume that
keeps the plan."""

from __future__ import annotations

import pytest

from distcl.config import schema as config
from distcl.runtime import checkpoint
from distcl.tracking import core as tracking
from distcl.train import budget
from distcl.train.budget import EpochCosts, knn_epochs, plan_epochs, planned_seconds, revise
from tests.tiny import tiny_overrides

COSTS = EpochCosts(spent_s=20.0, done=1, epoch_s=11.0, steps_per_epoch=20, knn_s=3.0)


def test_knn_epochs_counts_every_nth_and_the_last():
    assert knn_epochs(1, 3) == 0  # epoch 1's pass is part of spent_s
    assert knn_epochs(5, 3) == 2  # epochs 3 and 5
    assert knn_epochs(6, 3) == 2  # 3 and 6
    assert knn_epochs(4, 0) == 1  # only the last


def test_the_plan_is_the_most_epochs_that_fit():
    # epoch 1: 20 s; each later epoch 11 s; kNN (every 3rd and the last) 3 s
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
    assert "budget 45 s: 3 epoch(s) of 20 steps at 465 img/s, predicted 45 s" in line  # 256x20/11


def test_a_revision_keeps_a_plan_near_the_budget_and_replans_otherwise():
    at10 = EpochCosts(spent_s=50.0, done=10, epoch_s=0.25, steps_per_epoch=20, knn_s=0.0)

    # 60 s fits 50 epochs: 50 + 40 x 0.25; 1% of the budget (0.6 s) is 2.4 epochs
    def rev(current, **kw):
        return revise(current, 60.0, at10, max_epochs=kw.get("max_epochs", 500), knn_every=0)

    assert rev(50) == 50
    assert rev(52) == 52  # 60.5 s: within 0.6 s of the budget, kept
    assert rev(53) == 50  # 60.75 s: over, the most that fit
    assert rev(47) == 47  # 59.25 s: early by less than 0.6 s + one epoch
    assert rev(46) == 50  # 59.0 s: early by more
    assert rev(46, max_epochs=46) == 46  # train.epochs caps it
    late = EpochCosts(spent_s=70.0, done=10, epoch_s=1.0, steps_per_epoch=20, knn_s=0.0)
    assert revise(20, 60.0, late, max_epochs=500, knn_every=0) == 10  # never below done


def test_the_clock_measures_whole_epochs_and_carries_what_earlier_starts_spent():
    clock = budget.Clock(spent_before=30.0)
    clock.mark(0.0)  # the first epoch of a start is not measured
    assert clock.epoch_s() is None
    clock.last_mark -= 2.5  # the next epoch took 2.5 s plus a 1 s kNN pass
    clock.mark(1.0)
    assert clock.epoch_s() is not None and 1.5 <= clock.epoch_s() < 1.6
    assert clock.knn_s == 1.0
    for _ in range(budget.WINDOW + 5):  # only the last WINDOW epochs count
        clock.last_mark -= 0.5
        clock.mark(0.0)
    assert 0.5 <= clock.epoch_s() < 0.6
    assert budget.Clock(spent_before=30.0).spent() >= 30.0


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
    assert run.data.params["budget_plan"].startswith(f"budget {BUDGET_S:g} s: ")
    logger = tracking.RunLogger(mlflow_server, run.info.run_id)
    losses, lrs, elapsed, plans = (
        sorted(logger.metric_history(k)) for k in ("loss", "lr", "train_elapsed_s", "budget_epochs")
    )
    planned = int(plans[-1][1])  # the plan in force at the last epoch, after its revisions
    assert 2 <= planned < 500
    assert [s for s, _ in losses] == list(range(1, planned + 1))  # every planned epoch ran
    assert abs(elapsed[-1][1] - BUDGET_S) <= 0.1 * BUDGET_S, (elapsed[-1], plans[:3], planned)
    assert lrs[-1][1] <= 0.02 * max(v for _, v in lrs)  # the cosine reached its floor
    state = checkpoint.load(summary["checkpoint"])
    assert state["budget_epochs"] == planned and state["epoch"] == planned  # kept for a resume
    assert state["budget_spent_s"] == pytest.approx(elapsed[-1][1])

    again = fit(cfg, resume=True)  # train.epochs is still 500: only the stored plan stops it
    assert again["mlflow_run_id"] == run.info.run_id
    assert [s for s, _ in sorted(logger.metric_history("loss"))] == [s for s, _ in losses]
    assert checkpoint.load(again["checkpoint"])["epoch"] == planned
