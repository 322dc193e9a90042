"""Collectives of the training step at world size 2 (gloo, two processes on this machine).

Compared side by side, alternating, in one run:

- gather backward: the gradient of the gathered ``(W*B) x D`` embeddings all-reduced whole and
  sliced against a reduce-scatter that delivers each rank its ``B x D`` slice. A reduce-scatter
  moves 1/W of the data; distcl uses it on NCCL. On gloo (2 CPU ranks here) it measured slower
  than gloo's all-reduce, so distcl keeps the all-reduce there.
- DDP buffers: one MoCo v2 step (65,536-key queue, 32 MiB) with ``broadcast_buffers=True``
  (DDP broadcasts every buffer before every forward) against ``False`` (now; distcl broadcasts
  BatchNorm statistics once per epoch instead).

Run: python benchmarks/bench_collectives.py [--quick] [--json PATH]
Metrics: ``gather_bwd_allreduce_ms``, ``gather_bwd_reduce_scatter_ms``,
``gather_bwd_speedup``, ``moco_step_broadcast_ms``, ``moco_step_no_broadcast_ms``,
``moco_step_speedup``. On a GPU cluster (NCCL, many ranks) both gaps grow with W; the figures
here are for 2 ranks sharing 2 CPU cores.
"""

from __future__ import annotations

import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as tdist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402


def _moco_step(broadcast: bool, queue: int):
    from distcl.config import schema as config
    from distcl.models.methods import build_method

    cfg = config.load(
        None,
        ["method.name=moco_v2", f"method.queue_size={queue}", "model.width=8", "model.feat_dim=0",
         "train.global_batch=64"],
    )  # fmt: skip
    torch.manual_seed(0)
    model = build_method(cfg, 1, 10)
    from distcl.train.step import _NO_FORWARD_SYNC

    ddp = torch.nn.parallel.DistributedDataParallel(
        model, **({} if broadcast else _NO_FORWARD_SYNC)
    )
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01)
    views = [torch.randn(32, 1, 16, 16) for _ in range(2)]
    labels = torch.zeros(32, dtype=torch.int64)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        ddp(views, labels).backward()
        opt.step()

    return step


def _worker(rank: int, port: int, reps: int, rows: int, queue: int, out: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    tdist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        from distcl.runtime.dist import rows_summed_all_reduce, rows_summed_reduce_scatter

        local_n, grad = rows // 2, torch.randn(rows, 128)
        a = rows_summed_all_reduce(grad, local_n)
        b = rows_summed_reduce_scatter(grad, local_n)
        assert torch.allclose(a, b), "reduce-scatter and all-reduce+slice disagree"
        variants = {
            "allreduce": lambda: rows_summed_all_reduce(grad, local_n),
            "reduce_scatter": lambda: rows_summed_reduce_scatter(grad, local_n),
            "broadcast": _moco_step(True, queue),
            "no_broadcast": _moco_step(False, queue),
        }
        times = {k: [] for k in variants}
        for _ in range(2):  # warm-up
            for fn in variants.values():
                fn()
        for _ in range(reps):  # alternating; a barrier lines the ranks up before each timing
            for name, fn in variants.items():
                tdist.barrier()
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
        if rank == 0:
            torch.save(times, out)
    finally:
        tdist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    args = harness.parse_args(__doc__.split("\n")[0], argv)
    reps, rows, queue = (10, 8192, 65536) if args.quick else (30, 32768, 65536)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "times.pt")
        mp.spawn(_worker, args=(port, reps, rows, queue, out), nprocs=2, join=True)
        times = torch.load(out, weights_only=True)
    harness.print_table(
        f"gather backward of {rows} x 128 fp32 rows, world 2 (gloo)",
        {k: times[k] for k in ("allreduce", "reduce_scatter")},
        "allreduce",
    )
    harness.print_table(
        f"MoCo v2 DDP step, queue {queue} x 128, world 2 (gloo)",
        {k: times[k] for k in ("broadcast", "no_broadcast")},
        "broadcast",
    )
    med = {k: statistics.median(v) * 1000 for k, v in times.items()}
    metrics = {
        "gather_bwd_allreduce_ms": med["allreduce"],
        "gather_bwd_reduce_scatter_ms": med["reduce_scatter"],
        "gather_bwd_speedup": med["allreduce"] / med["reduce_scatter"],
        "moco_step_broadcast_ms": med["broadcast"],
        "moco_step_no_broadcast_ms": med["no_broadcast"],
        "moco_step_speedup": med["broadcast"] / med["no_broadcast"],
    }
    print("\n" + "  ".join(f"{k}={v:.3f}" for k, v in metrics.items()))
    harness.write_json(args.json, metrics)
    return 0


if __name__ == "__main__":
    sys.exit(main())
