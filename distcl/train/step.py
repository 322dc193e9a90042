"""One training step, shared by every method: forward, the ranks' vote on a finite loss,
backward. Also the DDP wrapping the step expects (`wrap_ddp`).

Plain torch only (no Ray), so the step runs in any process group, e.g. the gloo groups the
tests spawn. The training loop (distcl.train.loop) owns the optimizer step and the method's two
step calls (distcl.models.base.Method).
"""

from __future__ import annotations

import contextlib
import inspect

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from distcl.runtime import dist
from distcl.runtime.precision import autocast
from distcl.train.gradcache import gradcache_step


def _average_gradients(params: list[torch.nn.Parameter], world: int) -> None:
    """All-reduce mean of the few gradients DDP does not own (a loss's learnable temperature and
    bias on the gradient-caching path), in one flat buffer."""
    grads = [p.grad for p in params if p.grad is not None]
    if world == 1 or not grads:
        return
    flat = dist.all_reduce_sum(torch.cat([g.reshape(-1) for g in grads])) / world
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


class _Embedder(torch.nn.Module):
    """The part of a gradient-caching method (SimCLR/SupCon) that DDP wraps: images -> z.

    Gradient caching runs the encoder once per chunk; wrapped in DDP, every chunk but the last
    runs under `no_sync`, and the last chunk's backward all-reduces the accumulated gradients in
    DDP's buckets, overlapped with that backward. The loss's own parameters stay outside.
    """

    def __init__(self, method: torch.nn.Module):
        super().__init__()
        self.encoder, self.projector = method.encoder, method.projector  # DDP's parameters
        self._embed = method.embed  # a bound method, not a submodule: the loss stays outside

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._embed(x)  # B x proj_dim, exactly the method's own embedding


def wrap_ddp(model: torch.nn.Module, world: int, chunk: int) -> torch.nn.Module:
    """What the step calls: the method itself at world size 1, else the method in DDP, or (with
    gradient caching) its `_Embedder` in DDP.

    No buffer sync before each forward: DDP would otherwise broadcast every buffer each time
    (the 32 MiB MoCo v2 queue included). Queues and EMA targets are identical on every rank by
    construction; BatchNorm running statistics drift apart, are read only in evaluation, and
    are broadcast from rank 0 once per epoch (`dist.broadcast_buffers`).
    """
    if world == 1:
        return model
    wrapped = _Embedder(model) if chunk else model
    device = next(model.parameters()).device
    return DDP(
        wrapped, device_ids=[device.index] if device.type == "cuda" else None, **_NO_FORWARD_SYNC
    )


# Buffers synced once at construction, never before a forward. torch 2.14 names it
# forward_sync_buffers (its broadcast_buffers=False, deprecated there, also skips the first sync).
_NO_FORWARD_SYNC = (
    {"forward_sync_buffers": False}
    if "forward_sync_buffers" in inspect.signature(DDP.__init__).parameters
    else {"broadcast_buffers": False}
)


def train_step(
    model: torch.nn.Module,
    net: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    views: list[torch.Tensor],
    labels: torch.Tensor,
    *,
    chunk: int,
    use_bf16: bool,
) -> tuple[torch.Tensor, bool]:
    """One step: forward, backward, and the decision to apply it. Returns (detached loss,
    whether the optimizer may step). `net` is `wrap_ddp`'s output.

    A non-finite loss on ANY rank makes every rank skip: the ranks vote (one all-reduce) before
    the backward, whose DDP all-reduce would otherwise wait on a rank that skipped alone until
    NCCL's timeout. That vote is this step's one host sync.
    """
    device = views[0].device
    optimizer.zero_grad(set_to_none=True)
    if chunk:
        loss = gradcache_step(
            _autocast_encode(net, device, use_bf16),
            model.loss_from_embeddings,
            views,
            labels,
            chunk,
            no_sync=net.no_sync if isinstance(net, DDP) else contextlib.nullcontext,
            bn_module=model,
        )  # gradients are in .grad already, averaged by DDP in the last chunk's backward
    else:
        with autocast(device, use_bf16):
            loss = net(views, labels)
    if not dist.all_ranks_true(torch.isfinite(loss)):
        optimizer.zero_grad(set_to_none=True)
        return loss.detach(), False
    if chunk:
        _average_gradients(list(model.criterion.parameters()), dist.get_world_size())
    else:
        loss.backward()
    return loss.detach(), True


def _autocast_encode(net: torch.nn.Module, device: torch.device, use_bf16: bool):
    """`net`'s embedding call under the run's autocast (`net` is an `_Embedder`, maybe in DDP,
    or the method itself at world size 1)."""
    embed = net if isinstance(net, (_Embedder, DDP)) else net.embed

    def encode(x: torch.Tensor) -> torch.Tensor:
        with autocast(device, use_bf16):
            return embed(x)

    return encode
