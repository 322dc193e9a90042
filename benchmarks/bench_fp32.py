"""Where an fp32 training step of the CPU preset goes, and which settings make it faster.

The AVX2-only machines of the pool have no bf16, so distcl trains there in fp32. This benchmark
runs the `make train` preset's step (SimCLR, small_cnn, batch 256 x 2 views, AdamW, 1 thread:
one Ray worker's share of a 2-core machine) in fp32 and prints:

1. **phases**: encoder forward, projector + loss forward, backward, optimizer step;
2. **ops**: self CPU time by op kind (conv, batch norm, ReLU, pooling, matmuls, optimizer) from
   `torch.profiler`;
3. **convolutions**: each conv layer's forward and backward GFLOP/s (how near the core's peak
   they run, i.e. whether a library setting can still help);
4. **variants**, alternated A B A B in this one process: channels_last vs NCHW, the encoder
   shapes `small_cnn` and `small_cnn_s2` (stride-2 second conv), oneDNN off
   (`torch.backends.mkldnn`), and bf16 autocast where the CPU has it natively, each as the step
   time ratio to `small_cnn` in fp32 with channels_last;
5. **threads**: 1 thread at batch 256 vs 2 threads at batch 512 (one process using both cores
   instead of two 1-thread Ray workers);
6. **loader**: the FFCV loader's wait share of a plain fp32 epoch on real Fashion-MNIST `.beton`s.

`--isa avx2` re-runs the benchmark with oneDNN and ATen capped at AVX2 (`ONEDNN_MAX_CPU_ISA=AVX2`,
`ATEN_CPU_CAPABILITY=avx2`): the instruction path of an AVX2-only EPYC on a newer CPU, with this
CPU's clock, caches and memory (so absolute figures are this machine's, ratios carry over).

Run: python benchmarks/bench_fp32.py [--quick] [--json PATH] [--isa native|avx2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

AVX2_ENV = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}
OP_KINDS = {  # profiler op name fragment -> kind (first match wins)
    "convolution": "conv",
    "batch_norm": "batch norm",
    "threshold_backward": "relu",
    "clamp_min": "relu",
    "relu": "relu",
    "pool": "pooling",
    "adamw": "optimizer",
    "_foreach": "optimizer",
    "mm": "matmul (projector, loss)",
    "addmm": "matmul (projector, loss)",
}


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions, under 2 minutes")
    parser.add_argument("--json", type=Path, default=None, help="write flat metrics here")
    parser.add_argument(
        "--isa", choices=("native", "avx2"), default="native", help="cap oneDNN/ATen at AVX2"
    )
    return parser.parse_args()


def _reexec_capped(args: argparse.Namespace) -> None:
    """The ISA cap must be in the environment before torch loads: re-run this script with it."""
    if args.isa == "avx2" and os.environ.get("ONEDNN_MAX_CPU_ISA") != "AVX2":
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **AVX2_ENV})


def _config(*extra: str):
    from distcl.config import schema

    return schema.load(
        "fashion_mnist_simclr",
        [
            "train.precision=fp32",
            "tracking.enabled=false",
            f"data.beton_dir={ROOT / 'data'}",
            *extra,
        ],
    )


class Step:
    """The preset's model + AdamW on fixed random views; `run()` is one training step."""

    def __init__(self, arch: str, channels_last: bool, bf16: bool, batch: int):
        import torch

        from distcl.train.worker import build_model

        cfg = _config(f"model.arch={arch}", f"train.channels_last={str(channels_last).lower()}")
        torch.manual_seed(0)
        meta = {"channels": 1, "num_classes": 10}
        self.model, self.optimizer = build_model(cfg, meta, torch.device("cpu"))
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        self.views = [torch.randn(batch, 1, 28, 28).contiguous(memory_format=fmt) for _ in range(2)]
        self.labels = torch.zeros(batch, dtype=torch.long)
        self.bf16 = bf16

    def run(self) -> None:
        from distcl.runtime.precision import autocast

        self.optimizer.zero_grad(set_to_none=True)
        with autocast("cpu", self.bf16):
            loss = self.model(self.views, self.labels)
        loss.backward()
        self.optimizer.step()

    def phases(self) -> dict[str, float]:
        """Seconds of one step's phases (the CPU runs them synchronously)."""
        import torch

        m, marks = self.model, [time.perf_counter()]
        self.optimizer.zero_grad(set_to_none=True)
        h = m.encoder(torch.cat(self.views))
        marks.append(time.perf_counter())
        z = m.projector(h)
        loss = m.loss_from_embeddings(list(z.chunk(2)), self.labels)
        marks.append(time.perf_counter())
        loss.backward()
        marks.append(time.perf_counter())
        self.optimizer.step()
        marks.append(time.perf_counter())
        names = ("encoder forward", "projector + loss forward", "backward", "optimizer step")
        return {n: b - a for n, a, b in zip(names, marks[:-1], marks[1:], strict=True)}


def _median(rows: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.median(r[k] for r in rows) for k in rows[0]}


def phase_table(step: Step, reps: int) -> dict[str, float]:
    step.run()
    phases = _median([step.phases() for _ in range(reps)])
    total = sum(phases.values())
    print(f"\n1. phases of one fp32 step (median of {reps}), {total * 1e3:.0f} ms in all")
    for name, sec in phases.items():
        print(f"  {name:<26}{sec * 1e3:>8.1f} ms {sec / total:>7.1%}")
    return {f"phase_{n.split()[0]}_pct": 100 * s / total for n, s in phases.items()}


def op_table(step: Step, steps: int) -> dict[str, float]:
    from torch.profiler import ProfilerActivity, profile

    step.run()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step.run()
    kinds: dict[str, float] = {}
    for event in prof.key_averages():
        name = event.key.removeprefix("aten::")
        kind = next((k for frag, k in OP_KINDS.items() if frag in name.lower()), "other")
        kinds[kind] = kinds.get(kind, 0.0) + event.self_cpu_time_total
    total = sum(kinds.values())
    print(f"\n2. self CPU time by op kind ({steps} steps, torch.profiler)")
    for kind, us in sorted(kinds.items(), key=lambda kv: -kv[1]):
        print(f"  {kind:<26}{us / steps / 1e3:>8.1f} ms {us / total:>7.1%}")
    return {f"ops_{k.split()[0]}_pct": 100 * v / total for k, v in kinds.items()}


def conv_table(batch: int, reps: int) -> dict[str, float]:
    """Each conv of the preset encoder alone, channels_last, forward and backward GFLOP/s."""
    import torch
    from torch import nn

    out: dict[str, float] = {}
    print(f"\n3. the preset encoder's convolutions alone (batch {batch} x 2 views, channels_last)")
    for c_in, c_out, side in ((1, 16, 28), (16, 32, 28), (32, 64, 14), (64, 256, 7)):
        conv = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False).to(
            memory_format=torch.channels_last
        )
        x = torch.randn(2 * batch, c_in, side, side).contiguous(memory_format=torch.channels_last)
        x.requires_grad_(c_in > 1)  # the first conv's input needs no gradient, as in training
        fwd, bwd = [], []
        for _ in range(reps + 1):
            t0 = time.perf_counter()
            y = conv(x)
            t1 = time.perf_counter()
            y.backward(torch.ones_like(y))
            fwd.append(t1 - t0)
            bwd.append(time.perf_counter() - t1)
        macs = conv.weight.numel() * side * side * 2 * batch
        gf = 2 * macs / min(fwd[1:]) / 1e9
        gb = (4 if c_in > 1 else 2) * macs / min(bwd[1:]) / 1e9
        name = f"{c_in}->{c_out}@{side}"
        print(
            f"  {name:<14}{macs / 2 / batch / 1e6:>6.2f} M MACs/image  fwd {min(fwd[1:]) * 1e3:6.1f} ms "
            f"{gf:6.1f} GFLOP/s  bwd {min(bwd[1:]) * 1e3:6.1f} ms {gb:6.1f} GFLOP/s"
        )
        out[f"conv_{c_in}_{c_out}_fwd_gflops"] = gf
        out[f"conv_{c_in}_{c_out}_bwd_gflops"] = gb
    return out


def variant_table(batch: int, reps: int) -> dict[str, float]:
    import harness
    import torch

    from distcl.runtime.precision import bf16_supported

    steps = {
        "small_cnn fp32": Step("small_cnn", True, False, batch),
        "NCHW": Step("small_cnn", False, False, batch),
        "small_cnn_s2": Step("small_cnn_s2", True, False, batch),
    }
    if bf16_supported("cpu"):
        steps["bf16 (native)"] = Step("small_cnn", True, True, batch)
    fns = {name: s.run for name, s in steps.items()}

    def no_onednn() -> None:
        with torch.backends.mkldnn.flags(enabled=False):
            steps["small_cnn fp32"].run()

    fns["oneDNN off"] = no_onednn
    times = harness.measure_alternating(fns, reps=reps, warmup=2)
    harness.print_table(
        f"4. step variants, alternated (batch {batch} x 2 views, 1 thread)", times, "small_cnn fp32"
    )
    base = statistics.median(times["small_cnn fp32"])
    keys = {"small_cnn fp32": "fp32", "NCHW": "nchw", "small_cnn_s2": "s2"}
    keys |= {"bf16 (native)": "bf16", "oneDNN off": "onednn_off"}
    return {f"speedup_{keys[n]}": base / statistics.median(t) for n, t in times.items()}


def thread_table(reps: int) -> dict[str, float]:
    import torch

    rates = {}
    for threads, batch in ((1, 256), (2, 512)):
        torch.set_num_threads(threads)
        step = Step("small_cnn", True, False, batch)
        step.run()
        times = [time.perf_counter()]
        for _ in range(reps):
            step.run()
            times.append(time.perf_counter())
        rates[threads] = batch / statistics.median(
            b - a for a, b in zip(times[:-1], times[1:], strict=True)
        )
    torch.set_num_threads(1)
    ratio = rates[2] / rates[1]
    print("\n5. threads in one process (fp32, channels_last)")
    print(
        f"  1 thread, batch 256: {rates[1]:,.0f} images/s; 2 threads, batch 512: "
        f"{rates[2]:,.0f} images/s ({ratio:.2f}x; two 1-thread workers can give up to 2x)"
    )
    return {"images_per_s_1thread": rates[1], "images_per_s_2threads": rates[2]}


def loader_table(quick: bool) -> dict[str, float]:
    from bench_train_plain import PlainLoop

    from distcl.data.prepare import prepare_data

    cfg = _config(f"data.max_images={2048 if quick else 8192}")
    loop = PlainLoop(cfg, prepare_data(cfg), batch=256, threads=1)
    loop.epoch()  # FFCV's compile
    loop.wait = 0.0
    start = time.perf_counter()
    loop.epoch()
    elapsed = time.perf_counter() - start
    rate = loop.images_per_epoch / elapsed
    print("\n6. a plain fp32 epoch with the FFCV loader (1 torch + 1 loader thread)")
    print(f"  {rate:,.0f} images/s, waiting on the loader {loop.wait / elapsed:.1%} of the time")
    return {"loader_wait_pct": 100 * loop.wait / elapsed, "plain_fp32_images_per_s": rate}


def main() -> None:
    args = _args()
    _reexec_capped(args)
    import harness
    import torch

    torch.set_num_threads(1)
    reps = 3 if args.quick else 8
    info = harness.machine_description()
    print(
        f"machine: {info['cpu']}, {info['cores']} cores, torch {info['torch']}; "
        f"ATen {torch.backends.cpu.get_cpu_capability()}, --isa {args.isa}"
    )
    metrics: dict[str, float] = {}
    step = Step("small_cnn", True, False, 256)
    metrics |= phase_table(step, reps)
    metrics |= op_table(step, reps)
    metrics |= conv_table(256, reps)
    metrics |= variant_table(256, reps)
    metrics |= thread_table(reps)
    metrics |= loader_table(args.quick)
    harness.write_json(args.json, metrics)


if __name__ == "__main__":
    main()
