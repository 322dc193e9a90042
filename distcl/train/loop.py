"""Training: `train_loop_per_worker` runs on every Ray Train worker; `fit` drives a whole run.

The loop reads top to bottom: build the loader, the method and the optimizer, resume from Ray's
checkpoint if there is one, then per epoch: steps, metrics, kNN monitor, checkpoint + report.
The learning rate is a pure function of the global step, so a resumed run continues exactly.
"""

from __future__ import annotations

import os
import tempfile
import time
from typing import Any

import ray
import ray.train
import ray.train.torch
import torch

from distcl.config.schema import Config, from_flat
from distcl.data.loader import build_train_loader, split_batch, to_float
from distcl.evaluation.evaluate import knn_monitor
from distcl.models.methods import build_method
from distcl.runtime import checkpoint, dist
from distcl.runtime.precision import maybe_sync_batchnorm, resolve_precision, to_channels_last
from distcl.train import budget
from distcl.train.optim import build_optimizer, lr_at, param_groups, scaled_lr, set_lr
from distcl.train.step import train_step, wrap_ddp


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; the message names the step, the LR and likely causes."""


def _nonfinite_message(cfg: Config, step: int, loss: float, lr: float) -> str:
    return (
        f"non-finite loss {loss} at step {step} (lr {lr:.3g}). Likely causes: loss.temperature="
        f"{cfg.loss.temperature} too low (try >= 0.1), optim.lr too high (try a 3-10x lower lr), "
        "or bf16 overflow (try train.precision=fp32). train.skip_nonfinite=K skips up to K steps."
    )


def _resume_state(rank: int) -> dict[str, Any] | None:
    """The state to resume from: Ray's latest registered checkpoint or, when that one does not
    load, the newest older checkpoint of this run that does. Every rank follows rank 0's pick."""
    ckpt = ray.train.get_checkpoint()  # the same after a worker restart and a driver --resume
    if ckpt is None:
        return None
    state, used, skipped = checkpoint.load_with_fallback(ckpt.path, ckpt.filesystem)
    chosen = dist.broadcast_object(used)
    if used != chosen:  # this rank read differently (a flaky remote read): load rank 0's pick
        state = checkpoint.load(chosen, ckpt.filesystem)
    if rank == 0 and skipped:
        for exc in skipped:
            print(f"distcl: WARNING {exc}; passing it over", flush=True)
        print(f"distcl: WARNING resuming from the previous checkpoint {used}", flush=True)
    return state


def _thread_layout() -> str:
    """Threads and CPUs this worker computes with (torch, numba for the loader, the CPUs it may
    run on, and the thread variables Ray and the user set), for the run's log."""
    import numba

    env = " ".join(
        f"{k}={os.environ[k]}" for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS") if k in os.environ
    )
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "?"
    return (
        f"torch_threads={torch.get_num_threads()} numba_threads={numba.get_num_threads()} "
        f"cpus={cpus} {env}".rstrip()
    )


def _worker_node_ids(device: torch.device) -> list[str]:
    """The Ray node id of every rank, in rank order (node ids are 56 hex characters)."""
    node = ray.get_runtime_context().get_node_id().encode().ljust(64)
    codes = torch.tensor(list(node), dtype=torch.uint8, device=device)
    gathered = dist.gather_no_grad(codes[None]).cpu()  # world x 64
    return [bytes(row.tolist()).decode().strip() for row in gathered]


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
    loader_workers = cfg.data.loader_workers or max(1, int(cfg.train.cpus_per_worker))
    chunk = cfg.train.chunk_size if 0 < cfg.train.chunk_size < local_batch else 0

    model = build_method(cfg, meta["channels"], meta["num_classes"]).to(device)
    model = to_channels_last(model, cfg.train.channels_last)
    model = maybe_sync_batchnorm(model, cfg.train.sync_bn)
    optimizer = build_optimizer(
        cfg.optim.name,
        param_groups(model, cfg.optim.weight_decay),
        lr=cfg.optim.lr,
        momentum=cfg.optim.momentum,
        weight_decay=cfg.optim.weight_decay,
        trust_coefficient=cfg.optim.trust_coefficient,
    )
    start_epoch, step, epochs = 0, 0, cfg.train.epochs
    state = _resume_state(rank)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, step = state["epoch"], state["step"]
        epochs = state.get("budget_epochs") or epochs  # a budget's plan survives restarts
        checkpoint.set_rng_state(state["rng"])
        if rank == 0:
            print(f"distcl: resumed at epoch {start_epoch}, step {step}", flush=True)
    net = wrap_ddp(model, world, chunk)
    loader = build_train_loader(  # FFCV, or the torchvision fallback (data.loader)
        cfg.data,
        loop_cfg["train_path"],
        batch_size=local_batch,
        seed=cfg.train.seed,
        num_workers=loader_workers,
        epoch=start_epoch,
        rank=rank,
        world=world,
    )
    print(f"distcl: rank {rank} {_thread_layout()}", flush=True)
    steps_per_epoch = len(loader)
    total_steps = steps_per_epoch * epochs  # refitted once when a time budget plans the epochs
    plan_pending = cfg.train.time_budget_s > 0 and start_epoch == 0  # else the plan is kept
    peak_lr = scaled_lr(cfg.optim.lr, cfg.train.global_batch, cfg.optim.lr_scaling)
    warmup = min(total_steps, int(cfg.optim.warmup_epochs * steps_per_epoch))
    precision_used = resolve_precision(cfg.train.precision, device)
    use_bf16 = precision_used == "bf16"
    node_ids = _worker_node_ids(device)
    logger, logged, last_logged_step = None, set(), 0
    if rank == 0:
        print(f"distcl: worker nodes: {' '.join(node_ids)}", flush=True)
        print(f"distcl: computing in {precision_used} on {device}", flush=True)
        if loop_cfg.get("mlflow_run_id"):
            from distcl.tracking.core import RunLogger

            logger = RunLogger(loop_cfg["tracking_uri"], loop_cfg["mlflow_run_id"])
            logger.set_tags({"worker_node_ids": ",".join(node_ids)})
            logger.log_params_once({"precision_used": precision_used, "device": device.type})
            logged = {s for s, _ in logger.metric_history("loss")}  # epochs already in MLflow
            last_logged_step = max((s for s, _ in logger.metric_history("step_loss")), default=0)
    skipped, lr, log_every = 0, 0.0, cfg.train.log_every
    t_train, epoch = time.perf_counter(), start_epoch
    t_steps_end = steady_s = knn_s = 0.0  # the last epoch's timings, for the time budget
    while epoch < epochs:
        if plan_pending and epoch > start_epoch:  # one epoch reported: fix the plan, then the LR
            costs = budget.EpochCosts(
                spent_s=time.perf_counter() - t_train,
                done=epoch - start_epoch,
                step_s=steady_s,
                steps_per_epoch=steps_per_epoch,
                epoch_end_s=max(0.0, time.perf_counter() - t_steps_end - knn_s),
                knn_s=knn_s,
            )
            epochs, plan_pending = _plan_budget(cfg, costs, logger), False
            total_steps = steps_per_epoch * epochs
            continue  # re-check `epoch < epochs`: a budget may end the run here
        net.train()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        t_epoch, wait, n_steps = time.perf_counter(), 0.0, 0
        t_data, t_steady, i_steady = time.perf_counter(), t_epoch, 0
        for i, batch in enumerate(loader):
            wait += time.perf_counter() - t_data
            views, labels = split_batch(batch)
            views = [to_float(v, meta["channels"], device) for v in views]
            labels = labels.to(device, non_blocking=True)
            lr = lr_at(
                step,
                peak_lr=peak_lr,
                warmup_steps=warmup,
                total_steps=total_steps,
                final_lr=cfg.optim.final_lr,
            )
            set_lr(optimizer, lr)
            if i == min(3, steps_per_epoch // 4):  # past the compile: steady steps from here
                t_steady, i_steady = time.perf_counter(), i
            loss, applied = train_step(
                model, net, optimizer, views, labels, chunk=chunk, use_bf16=use_bf16
            )
            if applied:
                if hasattr(model, "before_optimizer_step"):  # e.g. SwAV freezes its prototypes
                    model.before_optimizer_step(epoch)
                optimizer.step()
                if hasattr(model, "after_optimizer_step"):  # e.g. EMA targets, prototype norms
                    model.after_optimizer_step(step, total_steps)
                loss_sum += loss.double()
                n_steps += 1
            else:  # every rank takes this branch together (train_step's vote)
                skipped += 1
                if skipped > cfg.train.skip_nonfinite:
                    raise NonFiniteLossError(_nonfinite_message(cfg, step, loss.item(), lr))
                if rank == 0:
                    print(
                        f"distcl: skipping non-finite step {step} ({skipped}/"
                        f"{cfg.train.skip_nonfinite})",
                        flush=True,
                    )
            step += 1
            if rank == 0 and log_every and step % log_every == 0:
                in_epoch = step - epoch * steps_per_epoch
                step_loss = loss.item()  # the one host read, every log_every steps
                print(
                    f"distcl: epoch {epoch + 1}/{epochs} step {in_epoch}/"
                    f"{steps_per_epoch} loss={step_loss:.4g} lr={lr:.3g}",
                    flush=True,
                )
                if logger is not None and step > last_logged_step:  # a re-run step logs once
                    logger.log_metrics({"step_loss": step_loss}, step=step)
            t_data = time.perf_counter()
        t_steps_end = time.perf_counter()
        elapsed = t_steps_end - t_epoch
        dist.broadcast_buffers(model)  # rank 0's BatchNorm statistics for kNN and checkpoint
        metrics = {
            "loss": dist.all_reduce_mean_scalar(float(loss_sum) / max(1, n_steps)),
            "lr": lr,
            "images_per_s": world * local_batch * steps_per_epoch / elapsed,
            "data_wait_frac": wait / elapsed,
            "epoch_time_s": elapsed,
            "epoch": epoch + 1,
        }
        if device.type == "cuda":
            metrics["gpu_peak_mem_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
        every, knn_s = cfg.eval.knn_every, 0.0
        if (every and (epoch + 1) % every == 0) or epoch + 1 == epochs or plan_pending:
            t_knn = time.perf_counter()
            metrics["knn_acc"] = knn_monitor(
                model.encoder,
                loop_cfg["train_eval_path"],
                loop_cfg["test_path"],
                k=cfg.eval.knn_k,
                channels=meta["channels"],
                device=device,
                bank_size=cfg.eval.knn_train_images,
                use_bf16=use_bf16,
            )
            knn_s = time.perf_counter() - t_knn
        steady_s = (t_steps_end - t_steady) / max(1, steps_per_epoch - i_steady)
        metrics["train_elapsed_s"] = time.perf_counter() - t_train
        # Log before the checkpoint is reported, and never twice: a restart may re-run an epoch
        # whose checkpoint was not registered, but its MLflow step is already there.
        if logger is not None and epoch + 1 not in logged:
            logger.log_metrics({k: v for k, v in metrics.items() if k != "epoch"}, step=epoch + 1)
            logged.add(epoch + 1)
        if rank == 0:
            print(
                f"distcl: epoch {epoch + 1}/{epochs} "
                + " ".join(f"{k}={v:.4g}" for k, v in metrics.items() if k != "epoch"),
                flush=True,
            )
        _report(cfg, model, optimizer, epoch, step, metrics, loop_cfg, rank, epochs)
        epoch += 1


def _plan_budget(cfg: Config, costs: budget.EpochCosts, logger) -> int:
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


def _report(cfg, model, optimizer, epoch, step, metrics, loop_cfg, rank, epochs) -> None:
    """Every rank reports (it is a barrier); rank 0 attaches the checkpoint."""
    if rank != 0:
        ray.train.report(metrics)
        return
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "epoch": epoch + 1,
        "step": step,
        "rng": checkpoint.rng_state(),
        "seed": cfg.train.seed,
        "budget_epochs": epochs if cfg.train.time_budget_s > 0 else 0,
        "mlflow_run_id": loop_cfg.get("mlflow_run_id") or "",
        "config": cfg.to_flat(),
        "meta": loop_cfg["meta"],
    }
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint.save(tmp, state)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


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
