"""What one Ray Train worker builds before its first step, in the order the loop calls it.

`build_model` (the method and its optimizer), `resume` (Ray's checkpoint, when there is one),
`build_loader` (FFCV or the torchvision fallback), `open_tracking` (rank 0's MLflow run). The
loop then holds the fixed pieces in one `Worker`, which its step and epoch-end helpers read.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import ray
import ray.train
import torch

from distcl.config.schema import Config
from distcl.data.loader import build_train_loader, split_batch, to_float
from distcl.models.base import Method
from distcl.models.methods import build_method
from distcl.runtime import checkpoint, dist
from distcl.runtime.precision import maybe_sync_batchnorm, to_channels_last
from distcl.train.optim import build_optimizer, param_groups


@dataclass
class Tracking:
    """Rank 0's MLflow run and what it already holds, so that a re-run epoch or step (after a
    worker restart) logs once. Other ranks, and runs without tracking, hold `logger=None`."""

    logger: Any = None  # distcl.tracking.core.RunLogger
    logged: set[int] = field(default_factory=set)  # epochs whose metrics are in MLflow
    last_logged_step: int = 0  # step_loss is in MLflow up to this global step


@dataclass(frozen=True)
class Worker:
    """The fixed pieces of one rank's training; the counters (epoch, step) stay in the loop."""

    cfg: Config
    loop_cfg: dict[str, Any]  # flat config + paths and dataset facts from `fit`
    rank: int
    device: torch.device
    model: Method
    net: torch.nn.Module  # what the step calls: `wrap_ddp(model)`
    optimizer: torch.optim.Optimizer
    chunk: int  # samples per gradient-caching chunk; 0 = one plain backward
    use_bf16: bool
    tracking: Tracking


def build_model(
    cfg: Config, meta: dict, device: torch.device
) -> tuple[Method, torch.optim.Optimizer]:
    """(method, optimizer): the method on `device` (channels-last, SyncBN when asked) and its
    optimizer over the trainable parameters (EMA targets are left out)."""
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
    return model, optimizer


def resume(
    model: Method, optimizer: torch.optim.Optimizer, rank: int
) -> tuple[int, int, int, float]:
    """(start epoch, global step, planned steps, training seconds spent): (0, 0, 0, 0) for a
    fresh run, else the state of Ray's checkpoint loaded into `model`, `optimizer` and the RNGs.
    The planned steps are a time budget's plan (0 = none: `train.epochs` of steps)."""
    state = _resume_state(rank)
    if state is None:
        return 0, 0, 0, 0.0
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    start_epoch, step = state["epoch"], state["step"]
    planned = int(state.get("budget_steps", 0))  # a budget's plan survives restarts
    checkpoint.set_rng_state(state["rng"])
    if rank == 0:
        print(f"distcl: resumed at epoch {start_epoch}, step {step}", flush=True)
    return start_epoch, step, planned, float(state.get("budget_spent_s", 0.0))


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


def build_loader(
    cfg: Config, meta: dict, path: str, local_batch: int, epoch: int, rank: int, world: int
):
    """This rank's training loader from `epoch` on: FFCV, or the torchvision fallback; for text
    the pairs' FFCV loader (distcl/data/text_loader.py)."""
    workers = cfg.data.loader_workers or max(1, int(cfg.train.cpus_per_worker))
    if meta.get("modality") == "text":
        from distcl.data.text_loader import text_loader

        return text_loader(
            path,
            local_batch,
            rank=rank,
            world=world,
            seed=cfg.train.seed,
            epoch=epoch,
            num_workers=workers,
            max_records=cfg.data.max_images,
        )
    return build_train_loader(
        cfg.data,
        path,
        batch_size=local_batch,
        seed=cfg.train.seed,
        num_workers=workers,
        epoch=epoch,
        rank=rank,
        world=world,
    )


def batch_on_device(
    batch, meta: dict, device: torch.device, text_views: str = "pairs"
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """(views, labels) of a loader batch on `device`: images as floats in [-1, 1]; a text pair's
    two token-id tensors as they are (`text_views=dropout`: its first text twice, SimCSE), with
    the synset as the label (SupCon's positives)."""
    if meta.get("modality") == "text":
        a, b, synset, _category = batch
        a = a.to(device, non_blocking=True)
        b = a if text_views == "dropout" else b.to(device, non_blocking=True)
        return [a, b], synset.to(device, non_blocking=True)
    views, labels = split_batch(batch)
    views = [to_float(v, meta["channels"], device) for v in views]
    return views, labels.to(device, non_blocking=True)


def thread_layout() -> str:
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


def open_tracking(
    loop_cfg: dict[str, Any], rank: int, device: torch.device, precision_used: str
) -> Tracking:
    """Every rank gathers the node ids (a collective); rank 0 prints them and the precision,
    and opens the run's MLflow logger when the driver made a run."""
    node_ids = _worker_node_ids(device)
    if rank != 0:
        return Tracking()
    print(f"distcl: worker nodes: {' '.join(node_ids)}", flush=True)
    print(f"distcl: computing in {precision_used} on {device}", flush=True)
    if not loop_cfg.get("mlflow_run_id"):
        return Tracking()
    from distcl.tracking.core import RunLogger

    logger = RunLogger(loop_cfg["tracking_uri"], loop_cfg["mlflow_run_id"])
    logger.set_tags({"worker_node_ids": ",".join(node_ids)})
    logger.log_params_once({"precision_used": precision_used, "device": device.type})
    return Tracking(
        logger=logger,
        logged={s for s, _ in logger.metric_history("loss")},  # epochs already in MLflow
        last_logged_step=max((s for s, _ in logger.metric_history("step_loss")), default=0),
    )
