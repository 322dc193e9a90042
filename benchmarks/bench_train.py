"""Training throughput: a real distcl Ray Train run vs a plain single-process PyTorch loop.

Variants, all on the CPU preset ``fashion_mnist_simclr`` (small_cnn width 16, two views, NT-Xent,
AdamW, bf16 autocast + channels_last where supported) over the first N Fashion-MNIST images:

  ray_2w         ``distcl.train.loop.run_trainer``: Ray Train, 2 workers x 1 CPU, global batch 512
  ray_1w         the same with 1 worker and global batch 256 (the per-worker batch of ray_2w)
  plain_b512     one process, FFCV loader in-process, batch 512, 2 torch threads, 2 loader threads
  plain_b256     one process, batch 256, 1 torch thread, 1 loader thread (= one ray_1w worker)
  plain_b256_sync  plain_b256 plus the loop's per-step ``torch.isfinite(loss).item()``

Ray runs are timed from the checkpoint names Ray Train writes at each ``report`` (millisecond
timestamps): one epoch *cycle* is the time between two reports, so it includes the report
barrier and the checkpoint, not only the steps. Epoch 1 (FFCV's numba compile) and the last
epoch (the kNN monitor) are left out. Plain epochs are alternated (A B C A B C ...) after one
warm-up epoch each, and bracket nothing else: Ray's own daemons run during both.

Metrics (``--json``):
  train_images_per_s   ray_2w images per second of epoch cycle (median over epochs)
  plain_images_per_s   plain_b512 images per second (median)
  ray_overhead_pct     100 * (1 - ray_1w / plain_b256): Ray Train's cost at the same per-worker
                       batch and threads (report, checkpoint, actor process)
  data_wait_pct        ray_2w rank 0's ``data_wait_frac`` (time blocked on the loader / epoch)
  mfu_pct              ray_2w model FLOP/s over a bf16 (or fp32) matmul peak measured here with
                       2 threads; step FLOPs from ``torch.utils.flop_counter.FlopCounterMode``
  sync_cost_pct        100 * (plain_b256_sync / plain_b256 - 1) in step time
  epoch1_extra_s       ray_2w epoch-1 time minus a later epoch's: FFCV's one-off compile
  later_epoch_spread   max / min of later ray_2w epoch times (near 1: nothing recompiles)

``--profile`` prints where a plain_b512 step spends its time (torch.profiler).

Run: python benchmarks/bench_train.py [--quick] [--json PATH] [--profile]
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402
from bench_train_plain import PlainLoop, matmul_peak, profile_plain, step_flops  # noqa: E402

from distcl.config import schema as config  # noqa: E402
from distcl.config.schema import Config  # noqa: E402

PRESET = "fashion_mnist_simclr"
FULL = 60000  # Fashion-MNIST training images: one real epoch
BETON_DIR = ROOT / "data"  # Fashion-MNIST .betons; `distcl prepare` writes them if absent


def bench_config(
    workers: int, batch: int, images: int, epochs: int, storage: str, *extra: str
) -> Config:
    """The CPU preset on the first `images` training images, no MLflow, one kNN at the end."""
    return config.load(
        PRESET,
        [
            f"data.beton_dir={BETON_DIR}",
            f"data.max_images={images}",
            f"train.num_workers={workers}",
            f"train.global_batch={batch}",
            f"train.epochs={epochs}",
            "train.time_budget_s=0",  # every epoch runs: the preset's budget is for make train
            f"train.keep_checkpoints={epochs}",
            f"train.storage_path={storage}",
            "eval.knn_every=0",
            "eval.knn_train_images=1024",
            "tracking.enabled=false",
            *extra,
        ],
    )


def prepare(cfg: Config) -> dict[str, Any]:
    from distcl.data.prepare import prepare_data

    return prepare_data(cfg)


# ----- Ray Train runs ---------------------------------------------------------------------------
def _report_time(checkpoint_path: str) -> float:
    """Seconds since the epoch from Ray Train's `checkpoint_%Y-%m-%d_%H-%M-%S.%f` dir name."""
    stamp = Path(checkpoint_path).name.removeprefix("checkpoint_")
    return datetime.strptime(stamp, "%Y-%m-%d_%H-%M-%S.%f").timestamp()


def ray_run(cfg: Config, data: dict[str, Any]) -> dict[str, Any]:
    """One `distcl.train.loop.run_trainer` run; per-epoch metrics of rank 0 and epoch-cycle times.

    Returns `cycles_s` (report-to-report seconds for epochs 2..N-1), `epoch_s` (in-loop step
    time of every epoch), `data_wait` (fractions, epochs 2..N), `images_per_epoch`, `wall_s`.
    """
    from distcl.train.loop import ensure_ray, run_trainer

    if cfg.train.epochs < 4:
        raise ValueError(f"train.epochs={cfg.train.epochs}: need >= 4 (compile, 2 clean, kNN)")
    ensure_ray()
    loop_cfg = {"config": cfg.to_flat(), **data, "tracking_uri": "", "mlflow_run_id": ""}
    name = f"bench-{cfg.train.num_workers}w-{time.strftime('%H%M%S')}-{os.getpid()}"
    start = time.perf_counter()
    result = run_trainer(cfg, loop_cfg, cfg.train.storage_path, name)
    wall = time.perf_counter() - start
    pairs = sorted(result.best_checkpoints, key=lambda cm: cm[1]["epoch"])
    if len(pairs) != cfg.train.epochs:
        raise RuntimeError(f"expected {cfg.train.epochs} checkpoints, Ray kept {len(pairs)}")
    stamps = [_report_time(ckpt.path) for ckpt, _ in pairs]
    metrics = [m for _, m in pairs]
    return {
        "cycles_s": [b - a for a, b in zip(stamps[:-2], stamps[1:-1], strict=True)],
        "epoch_s": [m["epoch_time_s"] for m in metrics],
        "data_wait": [m["data_wait_frac"] for m in metrics[1:]],
        "images_per_epoch": round(metrics[0]["images_per_s"] * metrics[0]["epoch_time_s"]),
        "wall_s": wall,
    }


# ----- the run ----------------------------------------------------------------------------------
def _rate(images: int, seconds: list[float]) -> float:
    return images / statistics.median(seconds)


def _parse_args():
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller run (2,048 images)")
    parser.add_argument("--json", type=Path, default=None, help="write flat metrics here")
    parser.add_argument("--profile", action="store_true", help="profile plain steps")
    return parser.parse_args()


def _run_variants(cfg2: Config, cfg1: Config, data: dict[str, Any], plain_reps: int, prof: bool):
    """Plain epochs, then both Ray runs, then plain again; returns loops, plain times, ray runs."""
    loops = {
        "plain_b512": PlainLoop(cfg2, data, 512, threads=2),
        "plain_b256": PlainLoop(cfg1, data, 256, threads=1),
    }
    if prof:
        profile_plain(loops["plain_b512"])
    for loop in loops.values():  # warm-up: FFCV's numba compile, then count waits afresh
        loop.epoch()
        loop.wait = 0.0
    b256 = loops["plain_b256"]
    variants = {  # the sync variant shares plain_b256's loader: one numba compile, not two
        "plain_b512": loops["plain_b512"].epoch,
        "plain_b256": lambda: b256.epoch(sync=False),
        "plain_b256_sync": lambda: b256.epoch(sync=True),
    }
    plain = harness.measure_alternating(variants, plain_reps, 0)
    ray2 = ray_run(cfg2, data)
    ray1 = ray_run(cfg1, data)
    plain_late = harness.measure_alternating(variants, plain_reps, 0)
    for k in plain:
        plain[k] += plain_late[k]
    return loops, plain, ray2, ray1


def _metrics(cfg2, data, loops, plain, ray2, ray1, rates) -> dict[str, float]:
    """The flat `--json` metrics; measures the step FLOPs and the matmul peak on the way."""
    # Report + checkpoint cost per epoch, and the overhead it would be on full 60k-image epochs.
    fixed_s = statistics.median(ray1["cycles_s"]) - statistics.median(ray1["epoch_s"][1:-1])
    per_image_ray1 = statistics.median(ray1["epoch_s"][1:-1]) / ray1["images_per_epoch"]
    per_image_plain = 1 / rates["plain_b256"]
    bf16 = loops["plain_b512"].bf16
    flops = step_flops(cfg2, data, 512) / 512  # per image (all views), forward + backward
    peak = matmul_peak(bf16, threads=2)
    later = ray2["epoch_s"][1:]
    return {
        "train_images_per_s": rates["ray_2w"],
        "plain_images_per_s": rates["plain_b512"],
        "ray_1w_images_per_s": rates["ray_1w"],
        "plain_b256_images_per_s": rates["plain_b256"],
        "ray_overhead_pct": 100 * (1 - rates["ray_1w"] / rates["plain_b256"]),
        "ray_2w_vs_plain_pct": 100 * (1 - rates["ray_2w"] / rates["plain_b512"]),
        "ray_cycle_overhead_s": fixed_s,
        "ray_overhead_60k_epoch_pct": 100
        * (1 - per_image_plain / (per_image_ray1 + fixed_s / FULL)),
        "data_wait_pct": 100 * statistics.median(ray2["data_wait"]),
        "plain_data_wait_pct": 100 * loops["plain_b512"].wait / sum(plain["plain_b512"]),
        "mfu_pct": 100 * flops * rates["ray_2w"] / peak,
        "gflop_per_image": flops / 1e9,
        "matmul_peak_gflops": peak / 1e9,
        "sync_cost_pct": 100
        * (
            statistics.median(plain["plain_b256_sync"]) / statistics.median(plain["plain_b256"]) - 1
        ),
        "epoch1_extra_s": ray2["epoch_s"][0] - statistics.median(later),
        "later_epoch_spread": max(later) / min(later),
        "bf16": float(bf16),
    }


def main() -> None:
    args = _parse_args()
    images, epochs, plain_reps = (2048, 4, 1) if args.quick else (4096, 4, 1)
    torch.set_num_threads(2)
    print("machine:", harness.machine_description())
    storage = tempfile.mkdtemp(prefix="distcl-bench-train-")
    cfg2 = bench_config(2, 512, images, epochs, storage)
    cfg1 = bench_config(1, 256, images, epochs, storage)
    data = prepare(cfg2)
    print(f"data: first {images} Fashion-MNIST images, {epochs} epochs per Ray run")
    loops, plain, ray2, ray1 = _run_variants(cfg2, cfg1, data, plain_reps, args.profile)

    times = {**plain, "ray_2w": ray2["cycles_s"], "ray_1w": ray1["cycles_s"]}
    harness.print_table("epoch seconds (Ray: report-to-report cycle)", times, "plain_b512")
    b256 = loops["plain_b256"]
    rates = {
        k: _rate(b256.images_per_epoch if "b256" in k else loops[k].images_per_epoch, v)
        for k, v in plain.items()
    }
    rates["ray_2w"] = _rate(ray2["images_per_epoch"], ray2["cycles_s"])
    rates["ray_1w"] = _rate(ray1["images_per_epoch"], ray1["cycles_s"])
    in_loop_2w = _rate(ray2["images_per_epoch"], ray2["epoch_s"][1:-1])
    print("\nimages/s: " + "  ".join(f"{k}={v:,.0f}" for k, v in rates.items()))
    print(
        f"ray_2w in-loop (steps only) {in_loop_2w:,.0f} images/s; Ray wall "
        f"{ray2['wall_s']:.1f} s (2w), {ray1['wall_s']:.1f} s (1w) incl. start-up"
    )
    metrics = _metrics(cfg2, data, loops, plain, ray2, ray1, rates)
    print("\n" + "\n".join(f"  {k:<24}{v:>12.4g}" for k, v in metrics.items()))
    harness.write_json(args.json, metrics)


if __name__ == "__main__":
    main()
