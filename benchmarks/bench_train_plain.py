"""The plain single-process PyTorch reference for bench_train.py: no Ray, same model and loader.

``PlainLoop`` runs the CPU preset's model, optimizer, FFCV loader and augmentation in this
process; ``step_flops`` counts one step's FLOPs, ``matmul_peak`` measures a matmul FLOP/s peak
for the MFU, and ``profile_plain`` prints where a plain step spends its time (torch.profiler).

Imported by bench_train.py, which puts the repository root and benchmarks/ on ``sys.path``.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import harness
import torch

if TYPE_CHECKING:
    from distcl.config.schema import Config


class PlainLoop:
    """The same model, optimizer, loader and augmentation in this process, without Ray."""

    def __init__(self, cfg: Config, data: dict[str, Any], batch: int, threads: int):
        from distcl.data.loader import train_loader
        from distcl.data.recipes import config_view_spec
        from distcl.runtime.precision import bf16_supported
        from distcl.train.worker import build_model

        self.threads, self.sync, self.channels = threads, False, data["meta"]["channels"]
        torch.manual_seed(cfg.train.seed)
        self.model, self.optimizer = build_model(cfg, data["meta"], torch.device("cpu"))
        self.bf16 = cfg.train.precision != "fp32" and bf16_supported("cpu")
        d = cfg.data
        spec = config_view_spec(d)
        self.loader = train_loader(
            data["train_path"],
            batch_size=batch,
            views=d.views,
            spec=spec,
            seed=cfg.train.seed,
            distributed=False,
            num_workers=threads,
        )
        self.images_per_epoch = batch * len(self.loader)
        self.wait = 0.0

    def step(self, batch) -> torch.Tensor:
        from distcl.data.loader import split_batch, to_float
        from distcl.runtime.precision import autocast

        views, labels = split_batch(batch)
        views = [to_float(v, self.channels, torch.device("cpu")) for v in views]
        self.optimizer.zero_grad(set_to_none=True)
        with autocast("cpu", self.bf16):
            loss = self.model(views, labels)
        if self.sync and not torch.isfinite(loss).item():  # the loop's per-step host read
            raise FloatingPointError("non-finite loss")
        loss.backward()
        self.optimizer.step()
        return loss

    def epoch(self, sync: bool = False) -> None:
        """One epoch; `self.wait` accumulates seconds blocked on the loader."""
        self.sync = sync
        torch.set_num_threads(self.threads)
        self.model.train()
        tick = time.perf_counter()
        for batch in self.loader:
            self.wait += time.perf_counter() - tick
            self.step(batch)
            tick = time.perf_counter()


def step_flops(cfg: Config, data: dict[str, Any], batch: int) -> int:
    """FLOPs of one training step (forward + backward) on `batch` images x the views."""
    from torch.utils.flop_counter import FlopCounterMode

    from distcl.models.methods import build_method

    meta, res = data["meta"], cfg.data.resolution
    model = build_method(cfg, meta["channels"], meta["num_classes"])
    views = [torch.randn(batch, meta["channels"], res, res) for _ in range(cfg.data.views)]
    counter = FlopCounterMode(display=False)
    with counter:
        model(views, torch.zeros(batch, dtype=torch.long)).backward()
    return counter.get_total_flops()


def matmul_peak(bf16: bool, threads: int, n: int = 2048, reps: int = 5) -> float:
    """Best FLOP/s of an n x n matmul at this precision and thread count."""
    torch.set_num_threads(threads)
    dtype = torch.bfloat16 if bf16 else torch.float32
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    times = harness.measure(lambda: a @ b, reps=reps, warmup=2)
    return 2 * n**3 / min(times)


def profile_plain(loop: PlainLoop, steps: int = 8) -> None:
    """Print the top ops of a few plain steps by self CPU time."""
    from torch.profiler import ProfilerActivity, profile

    batches = iter(loop.loader)
    torch.set_num_threads(loop.threads)
    loop.step(next(batches))
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            loop.step(next(batches))
    for _ in batches:  # drain the epoch so the loader is reusable
        pass
    print(f"\nprofile: {steps} plain steps (threads={loop.threads}), top ops by self CPU time")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
