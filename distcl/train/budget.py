"""Time budget (`train.time_budget_s`): how many steps fit, measured on the run's own epochs.

Like Lightning's `max_time`, except that the run does not stop mid-schedule. At the end of
epoch 1 (before its report) the run knows its steady step time, what an epoch's end costs so
far, what the kNN monitor costs (when it runs every few epochs; with `eval.knn_every=0` its
single last pass is not planned), and what epoch 1 itself cost (FFCV's numba compile included).
It plans the most optimizer steps, up to `train.epochs` epochs of them, whose training ends
inside the budget: whole epochs, then as many steps of one more epoch as still fit (that last
epoch stops early and pays its end, report and checkpoint like any other). The learning-rate
schedule is fitted to the planned steps (warm-up unchanged, cosine to `optim.final_lr` at the
last one), so a machine too slow for a second whole epoch still ends its schedule on time.

That first plan extrapolates epoch 1's steady steps, so it misses what every later epoch also
pays: the loader's start, the first steps, the report and the checkpoint (on the tiny test data
these were a quarter of an epoch: a 60 s plan ran 72 s). So the plan is revised at every later
epoch's end from the measured wall time of whole epochs (the mean of the last `WINDOW`,
report to report, the kNN monitor left out): it is kept while its predicted end is within
`SLACK` of the budget (up to 1% over or 2% under), so noise does not move it every epoch, and
otherwise replaced by the most steps that fit. Each revision refits the cosine to the new last
step; the learning rate stays a pure function of (step, plan), and the plan in force is stored
in every checkpoint with the training seconds spent, so a restarted worker group or `--resume`
goes on from both (the restart itself, like Ray's start, worker set-up and the final
evaluation, is outside the budget). The first epoch after a start pays the compile again, so
it is not measured. A plan whose steps are all done is final: time left over is not spent.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

WINDOW = 10  # epochs whose mean wall time predicts the rest
SLACK = 0.01  # of the budget: a plan predicted to end this near it is kept (no flip-flopping)


@dataclass(frozen=True)
class EpochCosts:
    """What the run measured, in seconds."""

    spent_s: float  # training so far: the `done` epochs, their ends, the compile
    done: int  # epochs finished
    epoch_s: float  # one later epoch, report to report, without the kNN monitor
    steps_per_epoch: int
    knn_s: float  # one kNN monitor pass
    step_s: float = 0.0  # one steady step; 0 = epoch_s / steps_per_epoch (no end cost)

    @property
    def steady_step_s(self) -> float:
        return self.step_s or self.epoch_s / self.steps_per_epoch

    @property
    def end_s(self) -> float:
        """An epoch's cost beyond its steps: loader start, metrics, report, checkpoint."""
        return max(0.0, self.epoch_s - self.steps_per_epoch * self.steady_step_s)


def knn_epochs(last: int, every: int, done: int = 1) -> int:
    """Epochs in done+1..last that run the kNN monitor: every `every`-th, and always the last."""
    return sum(1 for e in range(done + 1, last + 1) if (every and e % every == 0) or e == last)


def epochs_of(steps: int, steps_per_epoch: int) -> int:
    """Epochs that `steps` steps touch (the last one may be partial)."""
    return -(-steps // steps_per_epoch)


def planned_seconds(steps: int, costs: EpochCosts, knn_every: int) -> float:
    """Predicted training time of `steps` steps in all, from what was measured so far."""
    full, part = divmod(steps - costs.done * costs.steps_per_epoch, costs.steps_per_epoch)
    later = full * costs.epoch_s
    if part:
        later += part * costs.steady_step_s + costs.end_s
    last = epochs_of(steps, costs.steps_per_epoch)
    return costs.spent_s + later + knn_epochs(last, knn_every, costs.done) * costs.knn_s


def plan_steps(budget_s: float, costs: EpochCosts, *, max_epochs: int, knn_every: int) -> int:
    """The most steps (at least the `done` epochs', at most `max_epochs` epochs') predicted to
    end inside `budget_s`: whole epochs, then the steps of one more that still fit."""
    spe = costs.steps_per_epoch
    best = costs.done * spe
    for epochs in range(costs.done + 1, max_epochs + 1):
        if planned_seconds(epochs * spe, costs, knn_every) > budget_s:
            break
        best = epochs * spe
    if best >= max_epochs * spe:
        return best
    lo, hi = 0, spe - 1  # a partial next epoch: the most steps that fit (time grows with them)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if planned_seconds(best + mid, costs, knn_every) <= budget_s:
            lo = mid
        else:
            hi = mid - 1
    return best + lo


def revise(
    current: int, budget_s: float, costs: EpochCosts, *, max_epochs: int, knn_every: int
) -> int:
    """The plan (in steps) after a later epoch: `current` when its steps are all done, or while
    its predicted end is within `SLACK` over / 2 x `SLACK` under `budget_s`, else the most
    steps that fit."""
    if current <= costs.done * costs.steps_per_epoch:
        return current  # finished: the schedule has ended, left-over time is not spent
    end, slack = planned_seconds(current, costs, knn_every), SLACK * budget_s
    if budget_s - 2 * slack < end <= budget_s + slack or (
        end <= budget_s and current >= max_epochs * costs.steps_per_epoch
    ):
        return current
    return plan_steps(budget_s, costs, max_epochs=max_epochs, knn_every=knn_every)


def describe(budget_s: float, steps: int, costs: EpochCosts, knn_every: int, batch: int) -> str:
    """The line a run prints when it plans (`batch` = images per step, all ranks)."""
    spe = costs.steps_per_epoch
    rate = batch * spe / costs.epoch_s if costs.epoch_s > 0 else float("inf")
    full, part = divmod(steps, spe)
    shape = f"{full} epoch(s) of {spe} steps" + (f" and {part} steps of one more" if part else "")
    return (
        f"budget {budget_s:g} s: {shape} at {rate:,.0f} img/s, predicted "
        f"{planned_seconds(steps, costs, knn_every):.0f} s ({costs.spent_s:.1f} s after "
        f"{costs.done} epoch(s), FFCV's compile included; an epoch {costs.epoch_s:.2f} s, a "
        f"step {costs.steady_step_s * 1e3:.0f} ms, the kNN monitor {costs.knn_s:.1f} s)"
    )


@dataclass
class Clock:
    """One rank's training clock and the walls of its measured epochs.

    `spent()` counts from this start plus what earlier starts spent (from the checkpoint).
    `mark(knn_s)` closes an epoch at its end (before its report) and returns its wall time
    since the previous mark without the kNN monitor; the first epoch of a start is not
    measured (the previous mark is the start, and the compile is in it)."""

    spent_before: float = 0.0
    t0: float = field(default_factory=time.perf_counter)
    last_mark: float | None = None
    walls: list[float] = field(default_factory=list)
    knn_s: float = 0.0  # the last kNN monitor pass
    steps_s: float = 0.0  # the last epoch's steps extrapolated from its steady ones
    t_steps_end: float = 0.0
    steps_per_epoch: int = 0
    announced: int = 0  # the last plan printed

    def spent(self) -> float:
        return self.spent_before + time.perf_counter() - self.t0

    def steps_done(self, steady_step_s: float, steps: int) -> None:
        """The epoch's steps ended; `steady_step_s` is one step past the compile."""
        self.t_steps_end, self.steps_s = time.perf_counter(), steady_step_s * steps
        self.steps_per_epoch = steps

    def first_estimate(self) -> float:
        """A later epoch's wall as epoch 1 predicts it: its steady steps plus its end so far
        (metrics, not yet the report); call after `mark`."""
        assert self.last_mark is not None
        return self.steps_s + max(0.0, self.last_mark - self.t_steps_end - self.knn_s)

    def mark(self, knn_s: float) -> None:
        now = time.perf_counter()
        if knn_s > 0:
            self.knn_s = knn_s
        if self.last_mark is not None:
            self.walls.append(max(0.0, now - self.last_mark - knn_s))
        self.last_mark = now

    def epoch_s(self) -> float | None:
        """Mean wall of the last `WINDOW` measured epochs; None before the first one."""
        recent = self.walls[-WINDOW:]
        return sum(recent) / len(recent) if recent else None
