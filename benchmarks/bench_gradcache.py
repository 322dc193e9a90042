"""Gradient caching: peak memory and time per step, global batch 4096 in chunks of 256 vs plain.

Variants (NT-Xent, T=0.1, two views, SGD step, world size 1, 1 torch thread; the encoder runs
under bf16 autocast with channels_last where the CPU supports it, as training runs it, and the
loss stays fp32):
  plain_256       one plain step on a global batch of 256 (the memory a 256 batch needs)
  gradcache_4096  one gradient-cached step on 4096, chunks of 256 (distcl.train.gradcache)
  plain_4096      one plain step on 4096, when its estimated peak fits in free memory (not --quick)

Encoder: the DESIGN.md calibration CNN (4 conv 16-32-64-128 with BN + ReLU, max-pools after the
2nd and 3rd conv, global average pool) + projection MLP 128 -> 256 -> 128 (distcl.models.heads),
on 1 x 28 x 28 inputs. Defined here: distcl.models.SmallCNN adds a residual block.

Memory: ``harness.peak_memory``, each measurement in a FRESH spawned process: it builds model,
optimizer and inputs, runs one batch-8 warm-up step (kernels, optimizer state), resets the
kernel's high-water mark and reports VmHWM - VmRSS over one full step, i.e. the resident memory
the step needs on top of weights and the input batch (2 x 4096 x 784 fp32 = 25.7 MB for 4096).
Time: ``harness.measure_alternating`` in this process, variants in turn.

Run: python benchmarks/bench_gradcache.py [--quick] [--json PATH]
"""

from __future__ import annotations

import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402

from distcl.losses import build_loss  # noqa: E402
from distcl.models.heads import projection_mlp  # noqa: E402
from distcl.runtime.precision import autocast, bf16_supported, fp32_embeddings, to_channels_last  # noqa: E402
from distcl.train.gradcache import gradcache_step  # noqa: E402

VARIANTS = ("plain_256", "gradcache_4096", "plain_4096")
CHUNK = 256  # samples per encoder chunk (per view)
THREADS = 1  # the machine has 2 shared cores; ratios, not absolute times, are the result


def _conv(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True)]  # fmt: skip


def build_model() -> nn.Sequential:
    """``B x 1 x 28 x 28 -> B x 128``: 4-conv CNN (16-32-64-128) + MLP head 128 -> 256 -> 128."""
    return nn.Sequential(
        *_conv(1, 16), *_conv(16, 32), nn.MaxPool2d(2),  # 28 -> 14
        *_conv(32, 64), nn.MaxPool2d(2),  # 14 -> 7
        *_conv(64, 128), nn.AdaptiveAvgPool2d(1), nn.Flatten(),  # B x 128
        projection_mlp(128, 256, 128),  # B x 128
    )  # fmt: skip


def step_fn(variant: str) -> Callable[[], None]:
    """Build model, optimizer and the 2 x B input views; warm up at batch 8; return one step."""
    torch.manual_seed(0)
    bf16 = bf16_supported("cpu")
    model = to_channels_last(build_model(), bf16)
    loss_fn = build_loss("ntxent", temperature=0.1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    batch = int(variant.split("_")[1])
    fmt = torch.channels_last if bf16 else torch.contiguous_format
    views = [torch.randn(batch, 1, 28, 28).to(memory_format=fmt) for _ in range(2)]  # 2 x B x..

    def encode(x: torch.Tensor) -> torch.Tensor:
        with autocast("cpu", bf16):  # encoder in bf16 where supported; the loss stays fp32
            return fp32_embeddings(model(x))  # c x 128

    def step(vs: list[torch.Tensor] = views) -> None:
        opt.zero_grad(set_to_none=True)
        if variant.startswith("gradcache"):
            gradcache_step(encode, loss_fn, vs, None, chunk_size=CHUNK, bn_module=model)
        else:
            loss_fn([encode(v) for v in vs], None).backward()
        opt.step()

    step([v[:8] for v in views])  # warm-up: kernels, optimizer state
    return step


def memory_setup(variant: str) -> Callable[[], None]:
    """For harness.peak_memory (runs in a fresh process)."""
    torch.set_num_threads(THREADS)
    return step_fn(variant)


def _available_mib() -> float:
    info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    return int(info["MemAvailable"].split()[0]) / 1024


def main() -> None:
    args = harness.parse_args(__doc__.splitlines()[0])
    torch.set_num_threads(THREADS)
    print("machine:", harness.machine_description(), "bf16:", bf16_supported("cpu"))
    time_reps, mem_reps, warmup = (1, 1, 0) if args.quick else (2, 2, 1)

    mib: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for _ in range(mem_reps):  # each one a fresh process
        for v in VARIANTS[:2]:
            mib[v].append(harness.peak_memory(memory_setup, v) / 2**20)
    variants = list(VARIANTS[:2])
    need = 16 * statistics.median(mib["plain_256"]) + 1024  # 16x activations, loss, slack
    if not args.quick and need < 0.6 * _available_mib():
        variants.append("plain_4096")
        mib["plain_4096"].append(harness.peak_memory(memory_setup, "plain_4096") / 2**20)
    elif not args.quick:
        print(f"skipping plain_4096: needs ~{need:.0f} MiB, {_available_mib():.0f} available")

    times = harness.measure_alternating(
        {v: step_fn(v) for v in variants}, reps=time_reps, warmup=warmup
    )
    mem = {v: int(statistics.median(mib[v]) * 2**20) for v in variants}
    print(f"memory: median of {mem_reps} fresh process(es) per variant (plain_4096: 1)")
    print("memory min/max MiB:", {v: (round(min(mib[v])), round(max(mib[v]))) for v in variants})
    harness.print_table(f"global batch 4096, chunks of {CHUNK}", times, "plain_256", mem)

    t = {v: harness.summarize(times[v])["median"] for v in variants}
    m = {v: mem[v] / 2**20 for v in variants}
    metrics = {
        "gradcache_4096_mem_ratio": m["gradcache_4096"] / m["plain_256"],
        "gradcache_4096_peak_mib": m["gradcache_4096"],
        "plain_256_peak_mib": m["plain_256"],
        "gradcache_4096_s_per_step": t["gradcache_4096"],
        "plain_256_s_per_step": t["plain_256"],
        # the same samples: one cached 4096 step vs 16 plain 256 steps (the encoder runs twice)
        "gradcache_4096_time_ratio_vs_16x256": t["gradcache_4096"] / (16 * t["plain_256"]),
    }
    if "plain_4096" in variants:
        metrics["plain_4096_peak_mib"] = m["plain_4096"]
        metrics["plain_4096_s_per_step"] = t["plain_4096"]
        metrics["gradcache_4096_mem_ratio_vs_plain_4096"] = m["gradcache_4096"] / m["plain_4096"]
        metrics["gradcache_4096_time_ratio_vs_plain_4096"] = t["gradcache_4096"] / t["plain_4096"]
    print("\nratios:")
    for key, value in metrics.items():
        if "ratio" in key:
            print(f"  {key:<42} {value:.3f}")
    ok = metrics["gradcache_4096_mem_ratio"] <= 1.3
    print(f"acceptance gradcache_4096_mem_ratio <= 1.3: {ok}")
    harness.write_json(args.json, metrics)


if __name__ == "__main__":
    main()
