"""Distributed helpers: the only module in distcl that imports ``torch.distributed``.

Every function is a no-op (identity, rank 0, world size 1) when no process group is initialised,
so losses and models run in a plain Python process. Collectives assume every rank passes a tensor
of the same shape and dtype, in the same order (the usual SPMD contract).

Why the gradient of a gather is a SUM over ranks (the fact every loss relies on):
each rank ``r`` computes a local loss ``L_r`` from its own rows (anchors) and the gathered global
rows (columns). DDP averages parameter gradients, so the model is trained on
``L = (1/W) * sum_r L_r``. Row ``z_i`` lives on one rank but appears as a column in every
``L_r``, so ``dL/dz_i = (1/W) * sum_r dL_r/dz_i``: the owning rank must receive the SUM of what
every rank sends back for its slice, and DDP's ``1/W`` then makes it the mean. A mean in the
gather's backward would divide by ``W`` twice.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as tdist
from torch import Tensor


def is_dist() -> bool:
    """True when a process group is initialised (even with world size 1)."""
    return tdist.is_available() and tdist.is_initialized()


def get_rank() -> int:
    """Rank of this process; 0 without a process group."""
    return tdist.get_rank() if is_dist() else 0


def get_world_size() -> int:
    """Number of processes in the group; 1 without a process group."""
    return tdist.get_world_size() if is_dist() else 1


def rank_offset(local_n: int) -> int:
    """Global index of this rank's first row when every rank holds ``local_n`` rows.

    Rows are laid out in rank order by :func:`gather_with_grad`, so the global index of local row
    ``i`` is ``rank_offset(local_n) + i``.
    """
    return get_rank() * local_n


def _all_gather_cat(x: Tensor) -> Tensor:
    """Plain all-gather along dim 0 in rank order: ``B x ...`` -> ``(W*B) x ...``, no autograd."""
    parts = [torch.empty_like(x) for _ in range(get_world_size())]
    tdist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


class _GatherWithGrad(torch.autograd.Function):
    """All-gather whose backward sums the incoming gradient over ranks, then slices."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        ctx.local_n = x.shape[0]
        return _all_gather_cat(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        if tdist.get_backend() == "nccl":
            return rows_summed_reduce_scatter(grad, ctx.local_n)
        return rows_summed_all_reduce(grad, ctx.local_n)


def rows_summed_reduce_scatter(grad: Tensor, local_n: int) -> Tensor:
    """This rank's ``B x ...`` slice of ``(W*B) x ...`` rows (rank order), summed over ranks,
    by a reduce-scatter: 1/W of the data an all-reduce of the whole gradient moves. The gather's
    backward uses it on NCCL."""
    grad = grad.contiguous()
    out = grad.new_empty((local_n, *grad.shape[1:]))
    _reduce_scatter(out, grad)
    return out


def rows_summed_all_reduce(grad: Tensor, local_n: int) -> Tensor:
    """The same slice by an all-reduce of the whole gradient. The gather's backward uses it on
    gloo, whose reduce-scatter ran 1.3-1.4x slower than its all-reduce on 2 CPU ranks
    (benchmarks/bench_collectives.py)."""
    grad = grad.contiguous().clone()  # all_reduce is in place; autograd owns `grad`
    tdist.all_reduce(grad, op=tdist.ReduceOp.SUM)
    start = get_rank() * local_n
    return grad[start : start + local_n]


# torch 2.14 renamed reduce_scatter_tensor (deprecated there) to reduce_scatter_single.
_reduce_scatter = getattr(tdist, "reduce_scatter_single", None) or tdist.reduce_scatter_tensor


def gather_with_grad(x: Tensor) -> Tensor:
    """All-gather ``x`` along dim 0 in rank order, carrying gradients back to every rank.

    Shapes: ``x`` is ``B x ...`` on every rank (same ``B`` everywhere); returns ``(W*B) x ...``.

    WARNING: plain ``torch.distributed.all_gather`` carries NO gradient. Its outputs are fresh
    tensors outside the autograd graph, so negatives gathered with it never push back on the rank
    that produced them, and the model silently trains on a fraction of the loss's gradient (only
    through its own rows). This function's backward sums the gradient of the gathered tensor
    over ranks and hands each rank its own slice (a reduce-scatter on NCCL; an all-reduce and a
    slice on gloo, where that measured faster). The sum is right under DDP, which averages parameter
    gradients over ``W`` ranks: ``(1/W) * sum_r dL_r/dz_i`` is exactly the gradient of the mean
    of the per-rank losses (see the module docstring). Every rank must call backward.

    Without a process group it returns ``x`` unchanged (same tensor, gradients flow as usual).
    """
    if get_world_size() == 1:
        return x
    return _GatherWithGrad.apply(x)


def gather_no_grad(x: Tensor) -> Tensor:
    """All-gather ``x`` along dim 0 in rank order, detached: ``B x ...`` -> ``(W*B) x ...``.

    For tensors that need no gradient: labels, instance ids, kNN features, MoCo keys.
    Without a process group it returns ``x.detach()``.
    """
    if get_world_size() == 1:
        return x.detach()
    with torch.no_grad():
        return _all_gather_cat(x.detach())


def all_reduce_sum(x: Tensor) -> Tensor:
    """Sum of ``x`` over ranks, detached, as a new tensor (the input is left untouched)."""
    out = x.detach().clone()
    if get_world_size() > 1:
        tdist.all_reduce(out, op=tdist.ReduceOp.SUM)
    return out


class _AllReduceWithGrad(torch.autograd.Function):
    """Sum over ranks; the gradient of a sum is the sum of the gradients over ranks."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        out = x.detach().clone()
        tdist.all_reduce(out, op=tdist.ReduceOp.SUM)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        grad = grad.contiguous().clone()
        tdist.all_reduce(grad, op=tdist.ReduceOp.SUM)
        return grad


def all_reduce_with_grad(x: Tensor) -> Tensor:
    """Differentiable sum of ``x`` over ranks (same shape as ``x``).

    ``y = sum_r x_r`` on every rank; backward all-reduces (SUM) the incoming gradient, because
    every rank's ``y`` depends on every ``x_r``. Under DDP's averaging this yields the gradient
    of the mean over ranks of the per-rank losses. Identity without a process group.
    """
    if get_world_size() == 1:
        return x
    return _AllReduceWithGrad.apply(x)


def all_reduce_mean_scalar(value: float) -> float:
    """Mean of a Python number over ranks (for metrics); ``value`` itself at world size 1."""
    if get_world_size() == 1:
        return float(value)
    # NCCL reduces only CUDA tensors; gloo only CPU ones.
    on_gpu = tdist.get_backend() == "nccl"
    device = torch.device("cuda", torch.cuda.current_device()) if on_gpu else torch.device("cpu")
    t = torch.tensor([float(value)], dtype=torch.float64, device=device)
    tdist.all_reduce(t, op=tdist.ReduceOp.SUM)
    return float(t.item()) / get_world_size()


def all_ranks_true(flag: Tensor) -> bool:
    """Whether the 0-d bool ``flag`` is True on EVERY rank (one all-reduce of one number).

    Use it where ranks must take the same branch before a collective, such as skipping a
    non-finite step: a rank that decided alone would leave the others waiting in DDP's
    all-reduce until the backend's timeout. The read is a host sync.
    """
    if get_world_size() == 1:
        return bool(flag.item())
    votes = flag.detach().reshape(1).to(torch.int32)  # on the flag's device: CUDA for NCCL
    tdist.all_reduce(votes, op=tdist.ReduceOp.MIN)
    return bool(votes.item())


def broadcast_buffers(module: torch.nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s buffers (BatchNorm running statistics, queues) to every rank.

    DDP runs without its per-forward buffer sync (it would broadcast every buffer before every
    forward); BatchNorm running statistics are the only buffers that drift apart across ranks,
    and only evaluation reads them, so the loop calls this once per epoch, before the kNN
    monitor and the checkpoint. A no-op at world size 1.
    """
    if get_world_size() == 1:
        return
    for buf in module.buffers():
        tdist.broadcast(buf.data, src=src)


def barrier() -> None:
    """Wait for every rank; no-op without a process group."""
    if get_world_size() > 1:
        tdist.barrier()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Return rank ``src``'s ``obj`` on every rank (picklable objects); ``obj`` at world size 1."""
    if get_world_size() == 1:
        return obj
    box = [obj if get_rank() == src else None]
    tdist.broadcast_object_list(box, src=src)
    return box[0]
