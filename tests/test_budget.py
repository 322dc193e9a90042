"""Time budget: the planner on measured costs, its revisions and clock, and a real run that must
end near its budget with its learning-rate schedule finished, its plan stored, and a resume that
keeps the plan."""

from __future__ import annotations

import math

import pytest

from distcl.config import schema as config
from distcl.runtime import checkpoint
from distcl.tracking import core as tracking
from distcl.train import budget
from distcl.train.budget import EpochCosts, knn_epochs, plan_steps, planned_seconds, revise
from tests.tiny import tiny_overrides

# 20 steps per epoch; a later epoch 11 s of which steps 0.5 s each (10 s) and its end 1 s
COSTS = EpochCosts(spent_s=20.0, done=1, epoch_s=11.0, steps_per_epoch=20, knn_s=3.0, step_s=0.5)


def test_knn_epochs_counts_every_nth_and_the_last():
    assert knn_epochs(1, 3) == 0  # epoch 1's pass is part of spent_s
    assert knn_epochs(5, 3) == 2  # epochs 3 and 5
    assert knn_epochs(6, 3) == 2  # 3 and 6
    assert knn_epochs(4, 0) == 1  # only the last


def test_the_plan_is_the_most_whole_epochs_then_the_steps_of_one_more_that_fit():
    # epoch 1: 20 s; each later epoch 11 s (20 steps of 0.5 s, its end 1 s); kNN 3 s
    assert COSTS.end_s == pytest.approx(1.0)
    assert planned_seconds(60, COSTS, 3) == 20 + 2 * 11 + 3  # kNN at epoch 3 (every 3rd, last)
    assert plan_steps(45.0, COSTS, max_epochs=50, knn_every=3) == 60
    # a partial 4th epoch pays its steps, its end and (as the last) a kNN pass: 4 steps = 51 s
    assert planned_seconds(64, COSTS, 3) == pytest.approx(20 + 2 * 11 + 3 + 4 * 0.5 + 1 + 3)
    assert plan_steps(48.0, COSTS, max_epochs=50, knn_every=3) == 60  # 1 step more: 49.5 s
    assert planned_seconds(64, COSTS, 0) == pytest.approx(20 + 2 * 11 + 4 * 0.5 + 1 + 3)
    assert plan_steps(48.0, COSTS, max_epochs=50, knn_every=0) == 64  # kNN only at the end
    # 44.9 s: 2 whole epochs (34 s with the last kNN), then 19 steps of the third: 20 + 11 +
    # 19 x 0.5 + 1 + 3 = 44.5 s (its 20th step makes the whole epoch, 45 s)
    assert plan_steps(44.9, COSTS, max_epochs=50, knn_every=3) == 59
    assert plan_steps(33.0, COSTS, max_epochs=50, knn_every=3) == 38  # 20 + 18 x 0.5 + 1 + 3
    assert plan_steps(10.0, COSTS, max_epochs=50, knn_every=3) == 20  # at least the done epoch
    assert plan_steps(1e6, COSTS, max_epochs=7, knn_every=3) == 140  # train.epochs caps it
    assert knn_epochs(6, 3, done=3) == 1  # only 6: 3 is done
    later = EpochCosts(**{**COSTS.__dict__, "spent_s": 55.0, "done": 3})
    assert plan_steps(69.0, later, max_epochs=50, knn_every=3) == 80  # 55 + 11 + 3 (last: kNN)
    assert plan_steps(10.0, later, max_epochs=50, knn_every=3) == 60  # never below done
    line = budget.describe(45.0, 60, COSTS, 3, 256)
    assert "budget 45 s: 3 epoch(s) of 20 steps at 465 img/s, predicted 45 s" in line  # 256x20/11
    assert "2 epoch(s) of 20 steps and 19 steps of one more" in budget.describe(
        44.9, 59, COSTS, 3, 256
    )


def test_a_revision_keeps_a_plan_near_the_budget_and_replans_otherwise():
    # 0.25 s an epoch of 20 steps, no end cost: 60 s fits 50 epochs (1,000 steps) after 10
    at10 = EpochCosts(spent_s=50.0, done=10, epoch_s=0.25, steps_per_epoch=20, knn_s=0.0)

    def rev(current, **kw):
        return revise(current, 60.0, at10, max_epochs=kw.get("max_epochs", 500), knn_every=0)

    assert rev(1000) == 1000
    assert rev(1040) == 1040  # 60.5 s: within 1% (0.6 s) over the budget, kept
    assert rev(1060) == 1000  # 60.75 s: over, the most that fit
    assert rev(960) == 960  # 59.5 s: early by less than 2% (1.2 s), kept
    assert rev(900) == 1000  # 58.75 s: early by more, replanned
    assert rev(900, max_epochs=45) == 900  # train.epochs caps it
    assert rev(200) == 200  # every planned step done: final, the time left is not spent
    late = EpochCosts(spent_s=70.0, done=10, epoch_s=1.0, steps_per_epoch=20, knn_s=0.0)
    assert revise(400, 60.0, late, max_epochs=500, knn_every=0) == 200  # never below done


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
    losses, lrs, elapsed, plans, fractions = (
        sorted(logger.metric_history(k))
        for k in ("loss", "lr", "train_elapsed_s", "budget_steps", "budget_epochs")
    )
    planned = int(plans[-1][1])  # the plan in force at the last epoch, after its revisions
    epochs = math.ceil(fractions[-1][1])  # its last epoch may be partial
    assert 2 <= epochs < 500
    assert [s for s, _ in losses] == list(range(1, epochs + 1))  # every planned epoch ran
    assert abs(elapsed[-1][1] - BUDGET_S) <= 0.1 * BUDGET_S, (elapsed[-1], plans[:3], planned)
    assert lrs[-1][1] <= 0.02 * max(v for _, v in lrs)  # the cosine reached its floor
    state = checkpoint.load(summary["checkpoint"])
    assert state["budget_steps"] == planned and state["epoch"] == epochs  # kept for a resume
    assert state["step"] == planned  # the last epoch stopped on the plan's last step
    # what was trained, not train.epochs, is what the run's figures and description say
    assert state["epochs_trained"] == pytest.approx(fractions[-1][1], abs=1e-3)
    assert summary["epochs_trained"] == state["epochs_trained"]
    note = tracking.get_run(mlflow_server, run.info.run_id).data.tags["mlflow.note.content"]
    assert f"{state['epochs_trained']:g} epochs" in note and "500 epochs" not in note
    assert state["budget_spent_s"] == pytest.approx(elapsed[-1][1])

    again = fit(cfg, resume=True)  # train.epochs is still 500: only the stored plan stops it
    assert again["mlflow_run_id"] == run.info.run_id
    assert [s for s, _ in sorted(logger.metric_history("loss"))] == [s for s, _ in losses]
    assert checkpoint.load(again["checkpoint"])["step"] == planned
