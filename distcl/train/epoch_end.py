"""An epoch's end on every rank, and the time budget's plan.

`end_epoch` completes the epoch's metrics (peak GPU memory, the kNN monitor when due, the
elapsed time), logs them to MLflow once, prints the `distcl: epoch ...` line and reports them
to Ray Train with rank 0's checkpoint (`report`: the model, the optimizer, the counters, the
RNG state, the plan and the training seconds spent). `plan_budget` plans and revises
`train.time_budget_s`'s steps (budget.py).
"""

from __future__ import annotations

import tempfile
import time

import ray
import ray.train
import torch

from distcl.evaluation.evaluate import knn_monitor
from distcl.evaluation.text_final import text_monitor
from distcl.runtime import checkpoint, dist
from distcl.train import budget
from distcl.train.worker import Worker


def end_epoch(
    w: Worker,
    metrics: dict[str, float],
    epoch: int,
    plan: int,
    step: int,
    knn_due: bool,
    clock: budget.Clock,
) -> int:
    """Add the peak GPU memory, the kNN accuracy (when due) and the training time to the
    epoch's `metrics`; let the time budget revise the `plan` (the run's steps in all); log the
    metrics to MLflow once, print them, and report them with the checkpoint. Returns the plan
    from here."""
    cfg, device, knn_s = w.cfg, w.device, 0.0
    if device.type == "cuda":
        metrics["gpu_peak_mem_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    if knn_due:
        t_knn = time.perf_counter()
        metrics.update(_monitor(w))
        knn_s = time.perf_counter() - t_knn
    clock.mark(knn_s)
    spe = clock.steps_per_epoch
    if cfg.train.time_budget_s > 0:
        plan = plan_budget(w, clock, epoch + 1, plan)
        metrics["budget_steps"] = plan
        metrics["budget_epochs"] = round(plan / spe, 3)  # the last epoch may be partial
    epochs = budget.epochs_of(plan, spe)
    metrics["train_elapsed_s"] = clock.spent()
    # Log before the checkpoint is reported, and never twice: a restart may re-run an epoch
    # whose checkpoint was not registered, but its MLflow step is already there.
    t = w.tracking
    if t.logger is not None and epoch + 1 not in t.logged:
        t.logger.log_metrics({k: v for k, v in metrics.items() if k != "epoch"}, step=epoch + 1)
        t.logged.add(epoch + 1)
    if w.rank == 0:
        print(
            f"distcl: epoch {epoch + 1}/{epochs} "
            + " ".join(f"{k}={v:.4g}" for k, v in metrics.items() if k != "epoch"),
            flush=True,
        )
    report(w, epoch, step, metrics, plan, step / spe)
    return plan


def _monitor(w: Worker) -> dict[str, float]:
    """The per-epoch monitor: kNN accuracy of the images, or the text monitor's figures."""
    cfg, paths = w.cfg, (w.loop_cfg["train_eval_path"], w.loop_cfg["test_path"])
    kw = {
        "k": cfg.eval.knn_k,
        "device": w.device,
        "bank_size": cfg.eval.knn_train_images,
        "use_bf16": w.use_bf16,
    }
    if w.loop_cfg["meta"].get("modality") == "text":
        return text_monitor(w.model.encoder, *paths, **kw)
    channels = w.loop_cfg["meta"]["channels"]
    return {"knn_acc": knn_monitor(w.model.encoder, *paths, channels=channels, **kw)}


def plan_budget(w: Worker, clock: budget.Clock, done: int, plan: int) -> int:
    """`train.time_budget_s`'s plan, in steps, after `done` epochs: the first plan after epoch 1
    of a fresh run, a revision after every later measured epoch, and the stored plan kept
    through the first epoch after a restart. Rank 0 decides for every rank; it prints each plan
    and logs the first as the `budget_plan` param (every epoch's plan is its `budget_steps` and
    `budget_epochs` metrics)."""
    cfg, rank = w.cfg, dist.get_rank()
    every, limit, spe = cfg.eval.knn_every, cfg.train.time_budget_s, clock.steps_per_epoch
    measured = clock.epoch_s()
    if measured is None and done > 1:  # the first epoch after a restart: keep the stored plan
        return plan
    epoch_s = clock.first_estimate() if measured is None else measured
    costs = budget.EpochCosts(clock.spent(), done, epoch_s, spe, clock.knn_s, clock.steps_s / spe)
    if measured is None:
        new = budget.plan_steps(limit, costs, max_epochs=cfg.train.epochs, knn_every=every)
    else:
        new = budget.revise(plan, limit, costs, max_epochs=cfg.train.epochs, knn_every=every)
    new = dist.broadcast_object(new)  # rank 0's plan: every rank runs the same schedule
    if rank == 0 and (measured is None or abs(new - clock.announced) >= 0.05 * clock.announced):
        clock.announced = new  # a revision by under 5% shows only in the metrics
        line = budget.describe(limit, new, costs, every, cfg.train.global_batch)
        if measured is not None:
            line = f"{line}; revised from {plan} steps"
        print(f"distcl: {line}", flush=True)
        if w.tracking.logger is not None and measured is None:
            w.tracking.logger.log_params_once({"budget_plan": line})
        if new == done * spe < cfg.train.epochs * spe:  # fitted to more: cut here
            print(
                f"distcl: warning: train.time_budget_s={limit:g} fits no step after epoch "
                f"{done}: the run ends now, before the learning rate reaches its floor; raise "
                "the budget or train on less data per epoch (data.max_images)",
                flush=True,
            )
    return new


def report(
    w: Worker, epoch: int, step: int, metrics: dict[str, float], plan: int, trained: float
) -> None:
    """Every rank reports (it is a barrier); rank 0 attaches the checkpoint. `trained`: the
    epochs trained so far (fractional after a budget's partial last epoch)."""
    if w.rank != 0:
        ray.train.report(metrics)
        return
    cfg = w.cfg
    state = {
        "model": w.model.state_dict(),
        "optimizer": w.optimizer.state_dict(),
        "epoch": epoch + 1,
        "step": step,
        "rng": checkpoint.rng_state(),
        "seed": cfg.train.seed,
        "budget_steps": plan if cfg.train.time_budget_s > 0 else 0,
        "budget_spent_s": metrics["train_elapsed_s"],
        "epochs_trained": round(trained, 4),
        "mlflow_run_id": w.loop_cfg.get("mlflow_run_id") or "",
        "config": cfg.to_flat(),
        "meta": w.loop_cfg["meta"],
    }
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint.save(tmp, state)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
