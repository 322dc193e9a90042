"""SwAV (Caron et al. 2020, "Unsupervised Learning of Visual Features by Contrasting Cluster
Assignments", NeurIPS): swapped prediction of online cluster codes over learnable prototypes.

For each global view i (views 0 and 1), codes `q_i` (`B x K`) come from the Sinkhorn-Knopp
equipartition of its prototype scores (no gradient); every other view v predicts them:
`loss = mean_i mean_{v != i} -sum_k q_i log softmax(s_v / T)`, mean over the batch.

Distributed: the Sinkhorn row and total sums are all-reduced (`dist.all_reduce_sum`), so the
codes of a rank's rows equal the codes of the same rows in a single process that holds the
whole global batch. Multi-crop: views 0-1 are the global crops; views 2.. are the local crops
(smaller resolution, from the `multicrop` view preset); views of one resolution share a forward.
Queue (`method.swav_queue_size` > 0): the last Q global-crop embeddings of the GLOBAL batch,
gathered without gradient so every rank holds the same queue (DDP need not broadcast it, and
does not); each rank adds its slice of the queue to its Sinkhorn columns, so the union over ranks
is the whole queue, as in a single process. The queue starts filling at epoch
`swav_queue_start_epoch` and is used once full (the reference code's rule).
Prototypes are L2-normalised after every optimizer step and get no update before epoch
`freeze_prototypes_epochs` (the paper freezes them for the first epoch).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distcl.models.base import Method
from distcl.models.fp32 import fp32
from distcl.models.heads import mlp
from distcl.runtime import dist


@torch.no_grad()
def sinkhorn(scores: Tensor, epsilon: float = 0.05, iters: int = 3) -> Tensor:
    """Equipartitioned soft codes for this rank's rows of a global batch (SwAV Algorithm 1).

    scores: `B_local x K` cosine scores in [-1, 1] (unit embeddings times unit prototypes).
    Returns `B_local x K` codes, each row summing to 1, in the dtype of `scores`. Runs in float64:
    `exp(s / epsilon)` reaches e^20 at epsilon 0.05. The shift by `-1 / epsilon` (the largest
    possible score) cancels in the first normalisation and keeps smaller epsilons finite.
    """
    if not epsilon > 0 or iters < 1:
        raise ValueError(
            f"method.swav_epsilon must be > 0 and method.swav_sinkhorn_iters >= 1, got "
            f"{epsilon} and {iters} (SwAV: 0.05 and 3)"
        )
    q = torch.exp((scores.double() - 1.0) / epsilon).T  # K x B_local
    k = q.shape[0]
    b = dist.all_reduce_sum(torch.tensor(float(q.shape[1]), dtype=q.dtype, device=q.device))
    q /= dist.all_reduce_sum(q.sum())
    for _ in range(iters):
        q /= dist.all_reduce_sum(q.sum(dim=1, keepdim=True))  # each prototype: total mass 1/K
        q /= k
        q /= q.sum(dim=0, keepdim=True)  # each sample: total mass 1/B
        q /= b
    return (q * b).T.to(scores.dtype)  # B_local x K, rows sum to 1


def swapped_prediction(codes: Tensor, scores: list[Tensor], temperature: float) -> Tensor:
    """`-sum_k q log softmax(s / T)`, mean over rows and over the predicting views.

    codes: `B x K` targets (no gradient); scores: the other views' `B x K` prototype scores.
    """
    losses = [-(codes * F.log_softmax(s / temperature, dim=1)).sum(dim=1).mean() for s in scores]
    return torch.stack(losses).mean()


class SwAV(Method):
    """Encoder + 2-layer projector (BN) + prototypes (`K x D`, no bias), Caron et al. 2020.

    prototypes: K (3000 on ImageNet and in solo-learn CIFAR). temperature: T (0.1).
    epsilon, sinkhorn_iters: Sinkhorn regularisation and iterations (0.05, 3).
    queue_size: global queue length Q (0 = none; paper: 3840 at batch 256).
    queue_start_epoch: epoch the queue starts filling (paper: 15). freeze_prototypes_epochs:
    epochs with frozen prototypes (paper: 1).
    """

    def __init__(
        self,
        encoder: nn.Module,
        *,
        hidden: int,
        dim: int,
        prototypes: int,
        temperature: float,
        epsilon: float,
        sinkhorn_iters: int,
        queue_size: int,
        queue_start_epoch: int,
        freeze_prototypes_epochs: int,
    ):
        super().__init__()
        if prototypes < 1 or not temperature > 0 or queue_size < 0:
            raise ValueError(
                f"method.swav_prototypes={prototypes} must be >= 1, method.swav_temperature="
                f"{temperature} > 0 and method.swav_queue_size={queue_size} >= 0 "
                "(SwAV: 3000, 0.1, 3840)"
            )
        self.encoder = encoder  # the trunk the probes evaluate
        self.projector = mlp(encoder.feat_dim, hidden, dim)
        self.prototypes = nn.Linear(dim, prototypes, bias=False)
        self.normalize_prototypes()
        self.temperature, self.epsilon, self.iters = temperature, epsilon, sinkhorn_iters
        self.queue_start_epoch = queue_start_epoch
        self.freeze_prototypes_epochs = freeze_prototypes_epochs
        # 2 x Q x D: the embeddings of global views 0 and 1, newest first.
        self.register_buffer("queue", torch.zeros(2, queue_size, dim))
        self.register_buffer("queue_rows", torch.zeros((), dtype=torch.long))  # rows filled
        # The epoch the loop last passed to before_optimizer_step (the forward has no epoch).
        self.register_buffer("epoch", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def normalize_prototypes(self) -> None:
        w = self.prototypes.weight
        w.copy_(F.normalize(w, dim=1))

    def embed(self, views: list[Tensor]) -> list[Tensor]:
        """Unit projections, one `B x D` per view; consecutive views of one size share a pass."""
        out: list[Tensor] = []
        start = 0
        while start < len(views):
            end = start + 1
            while end < len(views) and views[end].shape[-2:] == views[start].shape[-2:]:
                end += 1
            z = self.projector(self.encoder(torch.cat(views[start:end])))  # n*B x D
            out += list(F.normalize(z.float(), dim=1).chunk(end - start))
            start = end
        return out

    def _queue_columns(self, view: int) -> Tensor:
        """This rank's slice of the queue of global view `view` (`Q_r x D`), or `0 x D`."""
        if self.queue.shape[1] == 0 or int(self.queue_rows) < self.queue.shape[1]:
            return self.queue.new_zeros(0, self.queue.shape[2])
        return torch.tensor_split(self.queue[view], dist.get_world_size())[dist.get_rank()]

    @torch.no_grad()
    def _enqueue(self, z: list[Tensor]) -> None:
        size = self.queue.shape[1]
        if size == 0 or int(self.epoch) < self.queue_start_epoch:
            return
        for view in (0, 1):
            new = dist.gather_no_grad(z[view])[:size]  # (W*B) x D, in rank order
            self.queue[view] = torch.cat([new, self.queue[view][: size - len(new)]])
        self.queue_rows.copy_(torch.clamp(self.queue_rows + len(new), max=size))

    def forward(self, views: list[Tensor], labels: Tensor) -> Tensor:
        if len(views) < 2:
            raise ValueError(f"method.name=swav needs data.views >= 2, got {len(views)}")
        z = self.embed(views)  # V x (B x D), float32
        b = len(z[0])
        with fp32(z[0]):  # scores and codes in fp32
            w = self.prototypes.weight.float()  # K x D
            scores = [zv @ w.T for zv in z]  # V x (B x K)
            losses = []
            for i in (0, 1):
                with torch.no_grad():
                    columns = torch.cat([self._queue_columns(i) @ w.T, scores[i]])  # (Q_r+B) x K
                    codes = sinkhorn(columns, self.epsilon, self.iters)[-b:]  # B x K
                others = [s for v, s in enumerate(scores) if v != i]
                losses.append(swapped_prediction(codes, others, self.temperature))
        self._enqueue(z)
        return torch.stack(losses).mean()

    def before_optimizer_step(self, epoch: int) -> None:
        """Record the epoch (for the queue); drop the prototypes' gradient while they are frozen
        (the paper's first epoch)."""
        self.epoch.fill_(epoch)
        if epoch < self.freeze_prototypes_epochs:
            self.prototypes.weight.grad = None  # the optimizer then skips them entirely

    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        """Project the prototypes back onto the unit sphere (SwAV normalises every step)."""
        self.normalize_prototypes()
