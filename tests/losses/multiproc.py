"""Shared world-size harness for the loss and dist tests.

One ``torch.multiprocessing`` spawn per world size (gloo over loopback, float64) runs EVERY loss
case below plus the ``distcl.runtime.dist`` helper checks, and each rank saves what it computed; the
result is cached for the pytest session, so each test file only compares numbers. Each rank
holds rows ``[r*B, (r+1)*B)`` of the same global batch that the single-process run sees whole.
"""

from __future__ import annotations

import functools
import socket
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as tdist
import torch.multiprocessing as mp
from torch import Tensor

from distcl.losses import build_loss
from distcl.runtime import dist

N_GLOBAL = 8  # images in the global batch (divisible by every tested world size)
DIM = 6
WORLD_SIZES = (2, 4)


@dataclass(frozen=True)
class Case:
    """One loss configuration checked at every world size."""

    case_id: str
    loss: str  # registry name
    params: dict[str, Any] = field(default_factory=dict)
    n_views: int = 2
    labelled: bool = False


CASES: tuple[Case, ...] = (
    Case("ntxent-v2", "ntxent", {"temperature": 0.3}),
    Case("ntxent-v3-chunked", "ntxent", {"temperature": 0.5, "chunk_size": 2}, n_views=3),
    Case("supcon-v2", "supcon", {"temperature": 0.3}, labelled=True),
    Case("supcon-v3-chunked", "supcon", {"temperature": 0.2, "chunk_size": 3}, 3, True),
    Case(
        "contrastive-cos",
        "contrastive",
        {"pos_margin": 0.1, "neg_margin": 0.9, "distance": "cosine"},
        labelled=True,
    ),
    Case(
        "contrastive-euc",
        "contrastive",
        {"pos_margin": 0.5, "neg_margin": 3.5, "distance": "euclidean"},
        n_views=3,
    ),
    Case("triplet-all-cos", "triplet", {"mining": "batch_all", "margin": 0.3}, labelled=True),
    Case("triplet-hard-cos", "triplet", {"mining": "batch_hard", "chunk_size": 2}),
    Case("triplet-semi-cos", "triplet", {"mining": "semi_hard", "margin": 0.3}, labelled=True),
    Case(
        "triplet-all-euc",
        "triplet",
        {"mining": "batch_all", "margin": 1.0, "distance": "euclidean"},
        n_views=3,
    ),
    Case(
        "triplet-hard-euc",
        "triplet",
        {"mining": "batch_hard", "margin": 1.0, "distance": "euclidean"},
        labelled=True,
    ),
    Case(
        "triplet-semi-euc",
        "triplet",
        {"mining": "semi_hard", "margin": 1.0, "distance": "euclidean"},
        n_views=3,
    ),
    Case("npair-v2", "npair", {"l2_reg": 0.01}),
    Case("npair-v3-labelled", "npair", {"l2_reg": 0.002}, n_views=3, labelled=True),
    Case("logistic-v2", "logistic", {"sigmoid_t_init": 5.0, "sigmoid_b_init": -2.0}),
    Case("logistic-v3-labelled", "logistic", {}, n_views=3, labelled=True),
)


def cases_for(loss: str) -> list[Case]:
    """The cases of one registry loss name."""
    return [c for c in CASES if c.loss == loss]


def make_data(case: Case) -> tuple[list[Tensor], Tensor | None]:
    """The global batch of a case: V float64 tensors ``N_GLOBAL x DIM`` and labels (or None)."""
    gen = torch.Generator().manual_seed(1000 + CASES.index(case))
    views = [
        torch.randn(N_GLOBAL, DIM, generator=gen, dtype=torch.float64) for _ in range(case.n_views)
    ]
    labels = None
    if case.labelled:
        labels = torch.randint(0, 3, (N_GLOBAL,), generator=gen)
        labels[:2] = torch.tensor([0, 1])  # at least two classes, so every anchor has negatives
    return views, labels


def run_case(case: Case) -> dict[str, Any]:
    """This rank's loss, view gradients and loss-parameter gradients (plain process: rank 0/1)."""
    views_g, labels_g = make_data(case)
    rank, world = dist.get_rank(), dist.get_world_size()
    rows = slice(rank * N_GLOBAL // world, (rank + 1) * N_GLOBAL // world)
    views = [v[rows].clone().requires_grad_(True) for v in views_g]
    labels = None if labels_g is None else labels_g[rows]
    module = build_loss(case.loss, **case.params).double()  # logistic's t', b in fp64 too
    loss = module(views, labels)
    loss.backward()
    return {
        "loss": loss.item(),
        "grads": [v.grad.detach().clone() for v in views],
        "param_grads": {n: p.grad.double().clone() for n, p in module.named_parameters()},
    }


def dist_checks() -> dict[str, Any]:
    """Exercise every distcl.runtime.dist helper; the test compares the records with closed forms."""
    rank, world = dist.get_rank(), dist.get_world_size()
    out: dict[str, Any] = {
        "is_dist": dist.is_dist(),
        "rank": rank,
        "world": world,
        "offset": dist.rank_offset(3),
    }
    x = torch.arange(6, dtype=torch.float64).reshape(3, 2) + 10 * rank
    gathered = dist.gather_no_grad(x.clone().requires_grad_(True))
    out["gather_no_grad"] = gathered
    out["gather_no_grad_requires_grad"] = gathered.requires_grad

    leaf = x.clone().requires_grad_(True)
    weights = rank_weights(rank, world)  # (3W) x 2, differs per rank
    (dist.gather_with_grad(leaf) * weights).sum().backward()
    out["gather_with_grad_grad"] = leaf.grad.clone()

    before = x.clone()
    out["all_reduce_sum"] = dist.all_reduce_sum(x)
    out["all_reduce_sum_input_untouched"] = bool(torch.equal(x, before))

    leaf = x.clone().requires_grad_(True)
    summed = dist.all_reduce_with_grad(leaf)
    out["all_reduce_with_grad"] = summed.detach().clone()
    (summed * (rank + 1.0)).sum().backward()
    out["all_reduce_with_grad_grad"] = leaf.grad.clone()

    out["mean_scalar"] = dist.all_reduce_mean_scalar(float(rank))
    dist.barrier()
    out["broadcast"] = dist.broadcast_object({"from": rank, "items": [rank, "x"]}, src=world - 1)
    return out


def rank_weights(rank: int, world: int) -> Tensor:
    """A different ``(3W) x 2`` weight per rank, for the gather_with_grad gradient check."""
    return torch.arange(3 * world * 2, dtype=torch.float64).reshape(3 * world, 2) * (rank + 1)


def _record() -> dict[str, Any]:
    """What one rank computes: every loss case and the dist helper checks."""
    return {"cases": {c.case_id: run_case(c) for c in CASES}, "dist": dist_checks()}


def _worker(
    rank: int, world: int, port: int, out_dir: str, compute: Callable[[], dict[str, Any]]
) -> None:
    torch.set_num_threads(1)
    tdist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        timeout=timedelta(seconds=60),
    )
    try:
        torch.save(compute(), Path(out_dir) / f"rank{rank}.pt")
    finally:
        tdist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn_ranks(world: int, compute: Callable[[], dict[str, Any]]) -> list[dict[str, Any]]:
    """Spawn ``world`` gloo ranks (loopback, one thread each) that each run ``compute`` (a
    module-level function, so it pickles); returns each rank's record, in rank order."""
    with tempfile.TemporaryDirectory() as out_dir:
        args = (world, _free_port(), out_dir, compute)
        mp.spawn(_worker, args=args, nprocs=world, join=True)
        return [torch.load(Path(out_dir) / f"rank{r}.pt", weights_only=False) for r in range(world)]


@functools.cache
def world_results(world: int) -> list[dict[str, Any]]:
    """Spawn ``world`` gloo ranks once per session; returns each rank's record, in rank order."""
    return spawn_ranks(world, _record)


def rel_err(got: Tensor | float, want: Tensor | float) -> float:
    """``max |got - want| / max |want|`` (a scale-aware relative error; 0 when both are 0)."""
    got_t, want_t = (
        torch.as_tensor(got, dtype=torch.float64),
        torch.as_tensor(want, dtype=torch.float64),
    )
    scale = want_t.abs().max().item()
    diff = (got_t - want_t).abs().max().item()
    return diff / scale if scale > 0 else diff


def check_world(case: Case, world: int, single: dict[str, Any], rtol: float = 1e-9) -> None:
    """Assert that ``world`` ranks reproduce the single-process loss and gradients of ``case``.

    Loss: the mean over ranks of the local losses is the single-process loss.
    Gradients: on rank r, backward through ``gather_with_grad`` all-reduces (sums) every rank's
    gradient for r's rows, so r's local gradient is ``d(sum_r L_r)/dz = W * dL/dz``; DDP divides
    by W when it averages, so ``local_grad / W`` must equal rank r's slice of the single-process
    gradient. Loss parameters (logistic's t', b) are per-rank copies: their mean over ranks
    (what DDP or the training loop applies) must equal the single-process gradient.
    """
    ranks = [world_results(world)[r]["cases"][case.case_id] for r in range(world)]
    mean_loss = sum(r["loss"] for r in ranks) / world
    assert rel_err(mean_loss, single["loss"]) <= rtol, (case.case_id, mean_loss, single["loss"])
    local_n = N_GLOBAL // world
    for v in range(case.n_views):
        for r, rec in enumerate(ranks):
            want = single["grads"][v][r * local_n : (r + 1) * local_n]
            err = rel_err(rec["grads"][v] / world, want)
            assert err <= rtol, f"{case.case_id} W={world} rank {r} view {v}: rel err {err:.2e}"
    for name, want in single["param_grads"].items():
        mean_grad = sum(rec["param_grads"][name] for rec in ranks) / world
        assert rel_err(mean_grad, want) <= rtol, (case.case_id, name, mean_grad, want)


def check_reference(
    case: Case, single: dict[str, Any], ref: dict[str, Any], rtol: float = 1e-9
) -> None:
    """Assert that the single-process library run matches the naive reference (loss, grads)."""
    err = rel_err(single["loss"], ref["loss"])
    assert err <= rtol, f"{case.case_id}: loss {single['loss']} vs reference {ref['loss']}"
    for v, (got, want) in enumerate(zip(single["grads"], ref["grads"], strict=True)):
        err = rel_err(got, want)
        assert err <= rtol, f"{case.case_id} view {v}: grad rel err {err:.2e} vs reference"
    for name, want in ref.get("param_grads", {}).items():
        err = rel_err(single["param_grads"][name], want)
        assert err <= rtol, f"{case.case_id} {name}: grad rel err {err:.2e} vs reference"


def reference_run(case: Case, reference: Any, **tensors: Tensor) -> dict[str, Any]:
    """Run a test's naive reference on the whole global batch of ``case``, with autograd.

    ``reference(views, labels, **params, **tensors)`` builds the full matrix; ``tensors`` are
    extra leaves (e.g. logistic's t', b) whose gradients are reported as ``param_grads``.
    """
    views_g, labels = make_data(case)
    views = [v.clone().requires_grad_(True) for v in views_g]
    params = {k: v for k, v in case.params.items() if k != "chunk_size"}
    loss = reference(views, labels, **params, **tensors)
    loss.backward()
    return {
        "loss": loss.item(),
        "grads": [v.grad for v in views],
        "param_grads": {k: t.grad for k, t in tensors.items()},
    }
