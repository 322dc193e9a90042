"""Time budget (`train.time_budget_s`): how many epochs fit, measured on the run's own epoch 1.

Like Lightning's `max_time`, except that the run does not stop mid-schedule: once epoch 1 has
been reported, the run knows its steady step time, what an epoch's end costs (metrics,
checkpoint, report, measured on epoch 1's), what the kNN monitor costs (when it runs every few
epochs; with `eval.knn_every=0` its single last pass is not planned), and what epoch 1 itself
cost (FFCV's numba compile included). Before epoch 2's first step it picks the most epochs, up
to `train.epochs`, whose training ends inside the budget, and the learning-rate schedule is
fitted to those epochs (warm-up unchanged, cosine to `optim.final_lr` at the last step). The
plan is stored in every later checkpoint, so a restarted or resumed run keeps it; a group that
restarts before its first planned checkpoint plans again, on its own clock.

The budget covers the epochs: from the first step to the last report. Ray's start, worker
set-up and the final evaluation in the driver are outside it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EpochCosts:
    """What the run measured, in seconds."""

    spent_s: float  # from the first step to now: the `done` epochs, their ends, the compile
    done: int  # epochs finished and reported
    step_s: float  # one steady-state step (epoch 1's steps after the first few)
    steps_per_epoch: int
    epoch_end_s: float  # metrics, checkpoint and report of one epoch (not the kNN monitor)
    knn_s: float  # one kNN monitor pass


def knn_epochs(last: int, every: int, done: int = 1) -> int:
    """Epochs in done+1..last that run the kNN monitor: every `every`-th, and always the last."""
    return sum(1 for e in range(done + 1, last + 1) if (every and e % every == 0) or e == last)


def planned_seconds(epochs: int, costs: EpochCosts, knn_every: int) -> float:
    """Predicted training time of `epochs` epochs in all, from what was measured so far."""
    steady = costs.step_s * costs.steps_per_epoch + costs.epoch_end_s
    later = (epochs - costs.done) * steady
    return costs.spent_s + later + knn_epochs(epochs, knn_every, costs.done) * costs.knn_s


def plan_epochs(budget_s: float, costs: EpochCosts, *, max_epochs: int, knn_every: int) -> int:
    """The most epochs (at least the `done` ones, at most `max_epochs`) predicted to end inside
    `budget_s`."""
    best = costs.done
    for epochs in range(costs.done + 1, max_epochs + 1):
        if planned_seconds(epochs, costs, knn_every) > budget_s:
            break
        best = epochs
    return best


def describe(budget_s: float, epochs: int, costs: EpochCosts, knn_every: int, batch: int) -> str:
    """The line a run prints when it fixes its plan (`batch` = images per step, all ranks)."""
    rate = batch / costs.step_s if costs.step_s > 0 else float("inf")
    return (
        f"budget {budget_s:g} s: {epochs} epoch(s) of {costs.steps_per_epoch} steps at "
        f"{rate:,.0f} img/s, predicted {planned_seconds(epochs, costs, knn_every):.0f} s "
        f"({costs.spent_s:.1f} s so far, FFCV's compile included; an epoch's end "
        f"{costs.epoch_end_s:.2f} s, the kNN monitor {costs.knn_s:.1f} s)"
    )
