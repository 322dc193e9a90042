"""MoCo v2 (Chen, Fan, Girshick & He 2020, arXiv:2003.04297; He et al. 2020, CVPR) and
MoCo v3 (Chen, Xie & He 2021, ICCV): a query encoder trained against a momentum key encoder.

- `moco_v2`: queries from view 0, keys from view 1 (He et al. 2020, Algorithm 1). Negatives are
  a queue of past keys. Keys are all-gathered WITHOUT gradient before they are enqueued, so every
  rank writes the same global keys at the same pointer and the queues stay identical; the pointer
  is a buffer that starts at 0 (pitfalls reported in facebookresearch/moco #16 and #97). The
  queue and pointer are buffers, so checkpoints carry them.
- `moco_v3`: projector + predictor on the query side, symmetric loss over both views, no queue:
  the other images of the global batch are the negatives (keys gathered without gradient).

The key encoder's momentum follows `distcl.models.ema.cosine_momentum` (MoCo v3 section 4;
MoCo v2 used a constant 0.999, i.e. `method.momentum=method.momentum_final=0.999`).
Shuffle-BN (MoCo v1/v2) is not implemented: each rank's BN sees its own views, as in
solo-learn's MoCo v2+ and in MoCo v3, which reach 92.9 / 93.1 % on CIFAR-10.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distcl.models.base import Method
from distcl.models.ema import Momentum, add_targets, follow_online, target_forward
from distcl.models.fp32 import fp32
from distcl.models.heads import mlp
from distcl.runtime import dist


def check_two_views(method: str, views: list[Tensor]) -> None:
    """Raise ValueError naming data.views when a two-view method gets another count."""
    if len(views) != 2:
        raise ValueError(
            f"method.name={method} uses exactly 2 views, got data.views={len(views)} "
            "(set data.views=2; multi-crop is for method.name=swav)"
        )


class KeyQueue(nn.Module):
    """A ring buffer of `size` L2-normalised keys of width `dim` (MoCo's dictionary).

    Buffers: `keys` (`size x dim`, random unit rows at start, as in the reference code) and
    `ptr` (the next row to write, starting at 0). `enqueue` all-gathers the keys without
    gradient first, so every rank holds the same queue.
    """

    def __init__(self, dim: int, size: int):
        super().__init__()
        if size < 1:
            raise ValueError(f"method.queue_size must be >= 1, got {size} (MoCo v2: 65536)")
        self.register_buffer("keys", F.normalize(torch.randn(size, dim), dim=1))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def enqueue(self, local_keys: Tensor) -> None:
        """Write this step's keys of every rank (`B_local x dim` here) at the pointer."""
        keys = dist.gather_no_grad(local_keys).to(self.keys.dtype)  # (W*B_local) x dim
        n, size = keys.shape[0], self.keys.shape[0]
        if n > size:
            raise ValueError(
                f"method.queue_size={size} is smaller than the global batch of {n} keys; "
                f"use a queue_size of at least {n} (MoCo v2: 65536)"
            )
        rows = (self.ptr + torch.arange(n, device=keys.device)) % size
        self.keys[rows] = keys
        self.ptr.copy_((self.ptr + n) % size)


def info_nce(q: Tensor, pos: Tensor, negatives: Tensor, temperature: float) -> Tensor:
    """MoCo v2's InfoNCE: `q`, `pos` are `B x D` unit rows, `negatives` is `K x D`.

    logits: `B x (1 + K)`, the positive in column 0 (He et al. 2020, Algorithm 1).
    """
    l_pos = (q * pos).sum(dim=1, keepdim=True)  # B x 1
    l_neg = q @ negatives.T  # B x K
    logits = torch.cat([l_pos, l_neg], dim=1) / temperature  # B x (1+K)
    return F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long, device=q.device))


def batch_contrast(q: Tensor, k: Tensor, temperature: float) -> Tensor:
    """MoCo v3's loss `ctr(q, k)`: `q` (`B_local x D`) against the global batch of keys.

    Keys are gathered without gradient (`(W*B_local) x D`); the positive of local query i is
    global key `rank_offset + i`. Scaled by `2 * temperature` as in MoCo v3 (Algorithm 1).
    Each rank returns the mean over its own queries, so the mean over ranks is the loss of the
    global batch.
    """
    q, k = F.normalize(q, dim=1), F.normalize(k, dim=1)
    keys = dist.gather_no_grad(k)  # (W*B_local) x D
    logits = q @ keys.T / temperature  # B_local x (W*B_local)
    target = torch.arange(len(q), device=q.device) + dist.rank_offset(len(q))
    return F.cross_entropy(logits, target) * (2 * temperature)


class MoCoV2(Method):
    """MoCo v2: 2-layer MLP head without BN (Chen et al. 2020b), queue of negatives.

    temperature: InfoNCE tau (0.2 in MoCo v2). queue_size: K, the number of negative keys
    (65536 on ImageNet, solo-learn CIFAR: 32768). momentum, momentum_final: the key encoder's
    EMA momentum schedule (MoCo v2: 0.999 at every step).
    """

    def __init__(
        self,
        encoder: nn.Module,
        *,
        hidden: int,
        dim: int,
        queue_size: int,
        temperature: float,
        momentum: Momentum,
    ):
        super().__init__()
        # query encoder (the probes evaluate it) + projector; their EMAs are the key side (ema.py)
        add_targets(self, encoder, mlp(encoder.feat_dim, hidden, dim, hidden_bn=False), momentum)
        self.temperature = temperature
        self.queue = KeyQueue(dim, queue_size)

    def forward(self, views: list[Tensor], labels: Tensor) -> Tensor:
        check_two_views("moco_v2", views)
        q = F.normalize(self.projector(self.encoder(views[0])).float(), dim=1)  # B x D
        k = F.normalize(target_forward(self, views[1]).float(), dim=1)  # B x D, no gradient
        # The queue is cloned: enqueue writes in place and autograd saved it for backward.
        with fp32(q):
            loss = info_nce(q, k, self.queue.keys.clone(), self.temperature)
        self.queue.enqueue(k)
        return loss

    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        """The key encoder and projector follow the query side (He et al. 2020, Algorithm 1)."""
        follow_online(self, step, total_steps)


class MoCoV3(Method):
    """MoCo v3 with a ResNet (Chen et al. 2021; the reference code's ResNet heads): a 2-layer
    projector with BN on both layers (output BN without affine) and a 2-layer predictor with BN
    on its hidden layer. Loss `ctr(q1, k2) + ctr(q2, k1)` over the two views (temperature 0.2).
    momentum: the key encoder's EMA momentum, cosine from the first (0.99) to the last step (1.0).
    """

    def __init__(
        self,
        encoder: nn.Module,
        *,
        hidden: int,
        dim: int,
        predictor_hidden: int,
        temperature: float,
        momentum: Momentum,
    ):
        super().__init__()
        # query encoder (the probes evaluate it) + projector; their EMAs are the key side (ema.py)
        add_targets(self, encoder, mlp(encoder.feat_dim, hidden, dim, last_bn=True), momentum)
        self.predictor = mlp(dim, predictor_hidden, dim)
        self.temperature = temperature

    def forward(self, views: list[Tensor], labels: Tensor) -> Tensor:
        check_two_views("moco_v3", views)
        # One forward for both views (2B x C x H x W), so BN sees both, as SimCLR's reference
        # does; MoCo v3's reference runs the views separately (per-view BN statistics).
        x = torch.cat(views)
        q1, q2 = self.predictor(self.projector(self.encoder(x))).float().chunk(2)  # B x D each
        k1, k2 = target_forward(self, x).float().chunk(2)  # B x D each, no gradient
        t = self.temperature
        with fp32(q1):
            return batch_contrast(q1, k2, t) + batch_contrast(q2, k1, t)

    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        """The momentum update of the key encoder and projector (MoCo v3, Algorithm 1)."""
        follow_online(self, step, total_steps)
