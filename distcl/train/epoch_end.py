"""An epoch's end on every rank, and the time budget's plan after the first one.

`end_epoch` completes the epoch's metrics (peak GPU memory, the kNN monitor when due, the
elapsed time), logs them to MLflow once, prints the `distcl: epoch ...` line and reports them
to Ray Train with rank 0's checkpoint (`report`: the model, the optimizer, the counters, the
RNG state and the plan). `plan_budget` fixes `train.time_budget_s`'s epochs once.
"""

from __future__ import annotations

import tempfile
import time

import ray
import ray.train
import torch

from distcl.config.schema import Config
from distcl.evaluation.evaluate import knn_monitor
from distcl.runtime import checkpoint, dist
from distcl.train import budget
from distcl.train.worker import Worker


def end_epoch(
    w: Worker,
    metrics: dict[str, float],
    epoch: int,
    epochs: int,
    step: int,
    knn_due: bool,
    t_train: float,
) -> float:
    """Add the peak GPU memory, the kNN accuracy (when due) and the elapsed time to the
    epoch's `metrics`; log them to MLflow once, print them, and report them with the checkpoint.
    Returns the kNN monitor's seconds (0 when not due), for the time budget."""
    cfg, device, knn_s = w.cfg, w.device, 0.0
    if device.type == "cuda":
        metrics["gpu_peak_mem_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    if knn_due:
        t_knn = time.perf_counter()
        metrics["knn_acc"] = knn_monitor(
            w.model.encoder,
            w.loop_cfg["train_eval_path"],
            w.loop_cfg["test_path"],
            k=cfg.eval.knn_k,
            channels=w.loop_cfg["meta"]["channels"],
            device=device,
            bank_size=cfg.eval.knn_train_images,
            use_bf16=w.use_bf16,
        )
        knn_s = time.perf_counter() - t_knn
    metrics["train_elapsed_s"] = time.perf_counter() - t_train
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
    report(w, epoch, step, metrics, epochs)
    return knn_s


def plan_budget(cfg: Config, costs: budget.EpochCosts, logger) -> int:
    """Epochs that fit `train.time_budget_s`: rank 0's plan, the same on every rank; printed
    and logged as the `budget_epochs` and `budget_plan` params."""
    every, limit = cfg.eval.knn_every, cfg.train.time_budget_s
    epochs = budget.plan_epochs(limit, costs, max_epochs=cfg.train.epochs, knn_every=every)
    epochs = dist.broadcast_object(epochs)  # rank 0's plan: every rank runs the same schedule
    if dist.get_rank() == 0:
        line = budget.describe(limit, epochs, costs, every, cfg.train.global_batch)
        print(f"distcl: {line}", flush=True)
        if logger is not None:
            logger.log_params_once({"budget_epochs": epochs, "budget_plan": line})
    return epochs


def report(w: Worker, epoch: int, step: int, metrics: dict[str, float], epochs: int) -> None:
    """Every rank reports (it is a barrier); rank 0 attaches the checkpoint."""
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
        "budget_epochs": epochs if cfg.train.time_budget_s > 0 else 0,
        "mlflow_run_id": w.loop_cfg.get("mlflow_run_id") or "",
        "config": cfg.to_flat(),
        "meta": w.loop_cfg["meta"],
    }
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint.save(tmp, state)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
