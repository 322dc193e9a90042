"""Training: `train_loop_per_worker` runs on every Ray Train worker; `run_trainer` fits a run.

The loop reads top to bottom: build the method and its optimizer, resume from Ray's checkpoint
if there is one, build the loader (worker.py), then per epoch: the steps (`_step`: LR, forward,
backward, the method's two step calls, the optimizer), then the epoch's end (epoch_end.py:
metrics, kNN monitor, MLflow, checkpoint + report). The learning rate is a pure function of the
global step, so a resumed run continues exactly.
"""

from __future__ import annotations

import os
import time
from typing import Any

import ray
import ray.train
import ray.train.torch
import torch

from distcl.config.schema import Config, from_flat
from distcl.runtime import dist
from distcl.runtime.precision import resolve_precision
from distcl.train import budget, epoch_end, worker
from distcl.train.optim import lr_at, scaled_lr, set_lr
from distcl.train.step import train_step, wrap_ddp
from distcl.train.worker import Worker


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; the message names the step, the LR and likely causes."""


def train_loop_per_worker(loop_cfg: dict[str, Any]) -> None:
    """One DDP rank of a run. `loop_cfg` = flat config + paths and dataset facts from `fit`."""
    cfg = from_flat(loop_cfg["config"])
    meta, rank, world = loop_cfg["meta"], dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(max(1, int(cfg.train.cpus_per_worker)))
    torch.manual_seed(cfg.train.seed)  # same initial weights on every rank
    device = ray.train.torch.get_device()
    if device.type == "cuda":  # NCCL collectives on tensors made without an index use this GPU
        torch.cuda.set_device(device)
    local_batch = cfg.train.global_batch // world
    chunk = cfg.train.chunk_size if 0 < cfg.train.chunk_size < local_batch else 0

    model, optimizer = worker.build_model(cfg, meta, device)
    start_epoch, step, planned, spent = worker.resume(model, optimizer, rank)
    net = wrap_ddp(model, world, chunk)
    path = loop_cfg["train_path"]
    loader = worker.build_loader(cfg, meta, path, local_batch, start_epoch, rank, world)
    print(f"distcl: rank {rank} {worker.thread_layout()}", flush=True)
    steps_per_epoch = len(loader)
    # The run's steps: train.epochs of them, or a time budget's plan (revised after each epoch;
    # its last epoch may stop early), and the LR schedule ends on the last one.
    total_steps = planned or steps_per_epoch * cfg.train.epochs
    epochs = budget.epochs_of(total_steps, steps_per_epoch)
    peak_lr = scaled_lr(cfg.optim.lr, cfg.train.global_batch, cfg.optim.lr_scaling)
    warmup = min(total_steps, int(cfg.optim.warmup_epochs * steps_per_epoch))
    precision_used = resolve_precision(cfg.train.precision, device)
    tracking = worker.open_tracking(loop_cfg, rank, device, precision_used)
    use_bf16 = precision_used == "bf16"
    w = Worker(cfg, loop_cfg, rank, device, model, net, optimizer, chunk, use_bf16, tracking)

    skipped, lr, log_every = 0, 0.0, cfg.train.log_every
    clock, epoch = budget.Clock(spent_before=spent), start_epoch  # training time, for the budget
    while epoch < epochs:
        net.train()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        t_epoch, wait, n_steps = time.perf_counter(), 0.0, 0
        t_data, t_steady, i_steady = time.perf_counter(), t_epoch, 0
        # this epoch's steps: all of them, or fewer in a time budget's partial last epoch
        steps = min(steps_per_epoch, total_steps - epoch * steps_per_epoch)
        for i, batch in enumerate(loader):
            wait += time.perf_counter() - t_data
            views, labels = worker.batch_on_device(batch, meta, device, cfg.data.preset)
            lr = lr_at(
                step,
                peak_lr=peak_lr,
                warmup_steps=min(warmup, total_steps),  # a budget may plan fewer epochs
                total_steps=total_steps,
                final_lr=cfg.optim.final_lr,
            )
            if i == min(3, steps // 4):  # past the compile: steady steps from here
                t_steady, i_steady = time.perf_counter(), i
            loss, applied = _step(w, views, labels, lr, epoch, step, total_steps)
            if applied:
                loss_sum += loss.double()
                n_steps += 1
            else:  # every rank takes this branch together (train_step's vote)
                skipped += 1
                _skip_nonfinite(w, skipped, step, loss, lr)
            step += 1
            if rank == 0 and log_every and step % log_every == 0:
                in_epoch = f"epoch {epoch + 1}/{epochs} step {step - epoch * steps_per_epoch}"
                _log_step(w, f"{in_epoch}/{steps_per_epoch}", step, loss, lr)
            if i + 1 == steps:  # a partial last epoch leaves the loader here
                break
            t_data = time.perf_counter()
        t_steps_end = time.perf_counter()
        elapsed = t_steps_end - t_epoch
        clock.steps_done((t_steps_end - t_steady) / max(1, steps - i_steady), steps_per_epoch)
        dist.broadcast_buffers(model)  # rank 0's BatchNorm statistics for kNN and checkpoint
        metrics = {
            "loss": dist.all_reduce_mean_scalar(float(loss_sum) / max(1, n_steps)),
            "lr": lr,
            "images_per_s": world * local_batch * steps / elapsed,
            "data_wait_frac": wait / elapsed,
            "epoch_time_s": elapsed,
            "epoch": epoch + 1,
        }
        every, first_plan = cfg.eval.knn_every, cfg.train.time_budget_s > 0 and epoch == 0
        knn_due = (every and ((epoch + 1) % every == 0 or first_plan)) or epoch + 1 == epochs
        total_steps = epoch_end.end_epoch(w, metrics, epoch, total_steps, step, knn_due, clock)
        epochs = budget.epochs_of(total_steps, steps_per_epoch)  # the LR ends on the last step
        epoch += 1


def _step(
    w: Worker,
    views: list[torch.Tensor],
    labels: torch.Tensor,
    lr: float,
    epoch: int,
    step: int,
    total_steps: int,
) -> tuple[torch.Tensor, bool]:
    """One optimizer step at `lr`: forward and backward (`train_step`), then, unless the ranks
    voted to skip it, the method's two step calls around `optimizer.step()`."""
    set_lr(w.optimizer, lr)
    loss, applied = train_step(
        w.model, w.net, w.optimizer, views, labels, chunk=w.chunk, use_bf16=w.use_bf16
    )
    if applied:
        w.model.before_optimizer_step(epoch)  # e.g. SwAV drops its frozen prototypes' gradient
        w.optimizer.step()
        w.model.after_optimizer_step(step, total_steps)  # e.g. EMA targets, prototype norms
    return loss, applied


def _skip_nonfinite(w: Worker, skipped: int, step: int, loss: torch.Tensor, lr: float) -> None:
    """The `skipped`-th non-finite step: past `train.skip_nonfinite` the run stops with the
    likely causes, else rank 0 says it skipped."""
    cfg = w.cfg
    if skipped > cfg.train.skip_nonfinite:
        raise NonFiniteLossError(
            f"non-finite loss {loss.item()} at step {step} (lr {lr:.3g}). Likely causes: "
            f"loss.temperature={cfg.loss.temperature} too low (try >= 0.1), optim.lr too high "
            "(try a 3-10x lower lr), or bf16 overflow (try train.precision=fp32). "
            "train.skip_nonfinite=K skips up to K steps."
        )
    if w.rank == 0:
        print(
            f"distcl: skipping non-finite step {step} ({skipped}/{cfg.train.skip_nonfinite})",
            flush=True,
        )


def _log_step(w: Worker, where: str, step: int, loss: torch.Tensor, lr: float) -> None:
    """Rank 0's line every `train.log_every` steps, and the `step_loss` metric in MLflow."""
    step_loss = loss.item()  # the one host read, every log_every steps
    print(f"distcl: {where} loss={step_loss:.4g} lr={lr:.3g}", flush=True)
    t = w.tracking
    if t.logger is not None and step > t.last_logged_step:  # a re-run step logs once
        t.logger.log_metrics({"step_loss": step_loss}, step=step)


def scaling_config(cfg: Config):
    """Ray Train's worker group: `train.num_workers` ranks of `train.cpus_per_worker` CPUs and,
    with `train.use_gpu`, one GPU each."""
    from ray.train import ScalingConfig

    resources = {"CPU": cfg.train.cpus_per_worker}
    if cfg.train.use_gpu:
        resources["GPU"] = 1
    return ScalingConfig(
        num_workers=cfg.train.num_workers,
        use_gpu=cfg.train.use_gpu,
        resources_per_worker=resources,
        placement_strategy=cfg.train.placement_strategy,
    )


def run_trainer(
    cfg: Config,
    loop_cfg: dict[str, Any],
    storage_path: str,
    name: str,
    callbacks: list | None = None,
):
    """Build and fit the TorchTrainer; returns Ray's Result. `callbacks` go to RunConfig
    (a Tune trial passes `TuneReportCallback()` so ASHA sees every epoch's report)."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_cfg,
        torch_config=TorchConfig(backend="nccl" if cfg.train.use_gpu else "gloo"),
        scaling_config=scaling_config(cfg),
        run_config=RunConfig(
            name=name,
            storage_path=storage_path,
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.train.keep_checkpoints),
            failure_config=FailureConfig(max_failures=cfg.train.max_failures),
            callbacks=callbacks or None,
        ),
    )
    return trainer.fit()


def cluster_shape(cfg: Config) -> tuple[int, bool]:
    """(alive Ray nodes, whether the driver's node alone can host every training worker).

    A local instance (no $RAY_ADDRESS) is one machine, so it always counts as one node that fits.
    """
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if not os.environ.get("RAY_ADDRESS") and len(nodes) <= 1:
        return len(nodes), True
    here = ray.get_runtime_context().get_node_id()
    res = next((n.get("Resources", {}) for n in nodes if n.get("NodeID") == here), {})
    t = cfg.train
    fits = res.get("CPU", 0) >= t.num_workers * t.cpus_per_worker and (
        not t.use_gpu or res.get("GPU", 0) >= t.num_workers
    )
    return len(nodes), fits


def ensure_ray(num_cpus: int | None = None) -> None:
    """Connect to $RAY_ADDRESS when set (a cluster job), else start a local instance."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    # Train V2 re-routes worker prints to a logger AND the wrapped stdout, so each line reached
    # the driver twice; local workers inherit this (cluster jobs get it from distcl launch).
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=True)
    else:
        # The dashboard process serves the state API that Train V2 uses to clean up placement
        # groups; it binds to 127.0.0.1 only.
        ray.init(num_cpus=num_cpus, dashboard_host="127.0.0.1", log_to_driver=True)
