"""Loss forward+backward: distcl (local x global, fused and chunked) vs the global-matrix version.

Losses: NT-Xent (T=0.2, instance ids), SupCon (T=0.2, 100 classes), triplet batch-hard (cosine,
margin 0.2, instance ids). Two views of N images, so 2N = 1024, 4096, 16384 rows, dim 128, fp32,
CPU, world size 1 (where "local x global" and "global x global" are the same size).

The global-matrix variants are the straightforward implementations: build the full 2N x 2N
similarity matrix with autograd, mask the diagonal and positives with dense masks, and reduce
(cross-entropy for NT-Xent; the Khosla et al. reference recipe for SupCon; masked max/min for
batch-hard). distcl's memory saving at world size 1 is real, not a sharding artefact: the
InfoNCE denominator is a fused logsumexp that recomputes blocks of logits in backward instead
of storing 2N x 2N matrices, SupCon's positive term uses per-class sums instead of a dense mask,
and batch-hard mines without autograd and differentiates only the 2N chosen distances.

Time: median of alternating runs (harness.measure_alternating). Memory: peak resident memory
above the inputs, each variant in a fresh process (harness.peak_memory). Ratios are
distcl / global-matrix; below 1 is better.

Threads: torch's default (all cores); set OMP_NUM_THREADS=1 to compare single-threaded. On a
machine shared with other jobs, many small parallel regions (the blocked variant) suffer more
from descheduled pool threads than a few large ones; the single-threaded ratio is the cleaner
measure of the work each variant does.

Run: python benchmarks/bench_loss.py [--quick] [--json PATH]
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402

from distcl.losses import info_nce_loss, supcon_loss, triplet_loss  # noqa: E402

ROWS = (1024, 4096, 16384)  # 2N: two views of N images
DIM = 128
TEMPERATURE = 0.2
MARGIN = 0.2
N_CLASSES = 100  # SupCon labels
LOSSES = ("ntxent", "supcon", "triplet")
VARIANTS = ("global", "distcl")


# ----- the straightforward global-matrix implementations -----------------------------------
def global_ntxent(z1: Tensor, z2: Tensor, labels: Tensor) -> Tensor:
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]), dim=1)  # 2N x D
    sim = z @ z.T / TEMPERATURE  # 2N x 2N
    eye = torch.eye(2 * n, dtype=torch.bool, device=z.device)
    sim = sim.masked_fill(eye, -1e9)
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
    return F.cross_entropy(sim, targets)


def global_supcon(z1: Tensor, z2: Tensor, labels: Tensor) -> Tensor:
    z = F.normalize(torch.cat([z1, z2]), dim=1)  # 2N x D
    ids = labels.repeat(2)
    sim = z @ z.T / TEMPERATURE  # 2N x 2N
    sim = sim - sim.max(dim=1, keepdim=True).values.detach()
    not_self = ~torch.eye(z.shape[0], dtype=torch.bool, device=z.device)
    pos = (ids.unsqueeze(0) == ids.unsqueeze(1)) & not_self
    exp_logits = torch.exp(sim) * not_self
    log_prob = sim - torch.log(exp_logits.sum(dim=1, keepdim=True))
    return -((pos * log_prob).sum(dim=1) / pos.sum(dim=1)).mean()


def global_triplet(z1: Tensor, z2: Tensor, labels: Tensor) -> Tensor:
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    ids = torch.arange(n, device=z.device).repeat(2)
    d = 1 - z @ z.T  # 2N x 2N cosine distances
    same = ids.unsqueeze(0) == ids.unsqueeze(1)
    eye = torch.eye(z.shape[0], dtype=torch.bool, device=z.device)
    hardest_pos = d.masked_fill(~same | eye, -1.0).max(dim=1).values
    hardest_neg = d.masked_fill(same, 3.0).min(dim=1).values
    return (hardest_pos - hardest_neg + MARGIN).clamp_min(0).mean()


# ----- distcl ---------------------------------------------------------------------------------
def distcl_ntxent(z1: Tensor, z2: Tensor, labels: Tensor) -> Tensor:
    return info_nce_loss([z1, z2], None, temperature=TEMPERATURE)


def distcl_supcon(z1: Tensor, z2: Tensor, labels: Tensor) -> Tensor:
    return supcon_loss([z1, z2], labels, temperature=TEMPERATURE)


def distcl_triplet(z1: Tensor, z2: Tensor, labels: Tensor) -> Tensor:
    return triplet_loss([z1, z2], None, margin=MARGIN, mining="batch_hard")


FUNCTIONS: dict[tuple[str, str], Callable[[Tensor, Tensor, Tensor], Tensor]] = {
    ("ntxent", "global"): global_ntxent,
    ("ntxent", "distcl"): distcl_ntxent,
    ("supcon", "global"): global_supcon,
    ("supcon", "distcl"): distcl_supcon,
    ("triplet", "global"): global_triplet,
    ("triplet", "distcl"): distcl_triplet,
}


def make_inputs(rows: int, seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """Two views ``N x DIM`` (leaves) and ``N`` labels, N = rows / 2."""
    gen = torch.Generator().manual_seed(seed)
    n = rows // 2
    z1 = torch.randn(n, DIM, generator=gen).requires_grad_(True)
    z2 = (z1.detach() + 0.5 * torch.randn(n, DIM, generator=gen)).requires_grad_(True)
    labels = torch.randint(0, N_CLASSES, (n,), generator=gen)
    return z1, z2, labels


def step_fn(loss: str, variant: str, rows: int) -> Callable[[], float]:
    """One forward + backward on fresh gradients."""
    fn = FUNCTIONS[(loss, variant)]
    z1, z2, labels = make_inputs(rows)

    def step() -> float:
        z1.grad = z2.grad = None
        value = fn(z1, z2, labels)
        value.backward()
        return value.item()

    return step


def memory_setup(loss: str, variant: str, rows: int, threads: int) -> Callable[[], float]:
    """For harness.peak_memory: threads, a small warm-up (loads kernels), then the real inputs."""
    torch.set_num_threads(threads)
    step_fn(loss, variant, 256)()
    return step_fn(loss, variant, rows)


def check_agreement(rows: int = 1024) -> None:
    """The two variants compute the same loss (fp32 tolerance) and gradients."""
    for loss in LOSSES:
        values, grads = [], []
        for variant in VARIANTS:
            z1, z2, labels = make_inputs(rows)
            value = FUNCTIONS[(loss, variant)](z1, z2, labels)
            value.backward()
            values.append(value.item())
            grads.append(torch.cat([z1.grad, z2.grad]))
        torch.testing.assert_close(values[1], values[0], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(grads[1], grads[0], rtol=1e-3, atol=1e-6)


def plan(quick: bool) -> list[tuple[int, str, int, int, bool]]:
    """(rows, loss, reps, warmup, measure memory) per comparison.

    --quick keeps the 2-minute budget on 2 shared cores: every loss at 1024 and 4096 rows, and at
    16384 only NT-Xent (the metrics the issue names), 2 reps, no warm-up there (the smaller sizes
    already loaded the kernels; each 16384 run allocates its own fresh buffers anyway), memory
    only at 16384.
    """
    if quick:
        small = [
            (rows, loss, reps, 1, False) for rows, reps in ((1024, 5), (4096, 3)) for loss in LOSSES
        ]
        return small + [(16384, "ntxent", 2, 0, True)]
    reps = {1024: 5, 4096: 3, 16384: 2}
    return [(rows, loss, reps[rows], 1, True) for rows in ROWS for loss in LOSSES]


def main() -> None:
    args = harness.parse_args(__doc__.splitlines()[0])
    threads = torch.get_num_threads()
    print("machine:", harness.machine_description())
    check_agreement()
    metrics: dict[str, float] = {}
    for rows, loss, reps, warmup, with_memory in plan(args.quick):
        steps = {v: step_fn(loss, v, rows) for v in VARIANTS}
        times = harness.measure_alternating(steps, reps=reps, warmup=warmup)
        del steps
        memory = None
        if with_memory:
            memory = {
                v: harness.peak_memory(memory_setup, loss, v, rows, threads) for v in VARIANTS
            }
            metrics[f"{loss}_{rows}_mem_ratio"] = memory["distcl"] / memory["global"]
            for v in VARIANTS:
                metrics[f"{loss}_{rows}_{v}_peak_mib"] = memory[v] / 2**20
        harness.print_table(f"{loss}, 2N = {rows}, dim {DIM}", times, "global", memory)
        med = {v: harness.summarize(t)["median"] for v, t in times.items()}
        metrics[f"{loss}_{rows}_time_ratio"] = med["distcl"] / med["global"]
        for v in VARIANTS:
            metrics[f"{loss}_{rows}_{v}_s"] = med[v]
    harness.write_json(args.json, metrics)
    print(
        f"\nntxent 16384: time ratio {metrics['ntxent_16384_time_ratio']:.3f}, "
        f"memory ratio {metrics['ntxent_16384_mem_ratio']:.3f} (distcl / global-matrix)"
    )


if __name__ == "__main__":
    main()
