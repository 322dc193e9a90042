"""Triplet loss with batch-all, batch-hard and semi-hard mining over the global batch.

Papers: Schroff, Kalenichenko and Philbin 2015, "FaceNet" (triplet loss, semi-hard negatives);
Hermans, Beyer and Leibe 2017, "In Defense of the Triplet Loss" (batch-all, batch-hard).

With distance ``d`` (cosine ``1 - cos`` or Euclidean, see ``distance.py``), margin ``m``,
positives ``P(a)`` (rows sharing ``a``'s id, not ``a``) and negatives ``N(a)`` (other ids):

    batch_all:  l_a = 1 / (|P(a)| |N(a)|) * sum_{p in P(a)} sum_{n in N(a)} max(0, d_ap - d_an + m)
    batch_hard: l_a = max(0, max_{p in P(a)} d_ap - min_{n in N(a)} d_an + m)
    semi_hard:  l_a = 1 / |P(a)| * sum_{p in P(a)} max(0, d_ap - d_{a n*(a,p)} + m), where n*(a,p)
                is the closest negative farther than the positive (``d_an > d_ap``, FaceNet's
                semi-hard negative); when every negative is closer, the farthest negative
                (as in TensorFlow Addons' ``triplet_semihard_loss``)
    L = mean over anchors a of l_a   (an anchor without negatives contributes 0)

Distributed: each rank's ``M = V*B`` local rows are anchors; positives and negatives are mined
among the ``K = V*N`` gathered global rows (``gather_with_grad``), so every anchor sees the
whole global batch. The local loss is the mean over local anchors, so the mean over ranks equals
the single-process loss and DDP's gradient averaging gives the single-process gradients.

Memory: batch-hard picks its two columns per anchor without autograd, in blocks of anchor rows
(O(chunk x K)), then recomputes only the ``M`` chosen distances with gradients. Batch-all and
semi-hard sort each anchor's negatives once (O(M x K)) instead of forming the
``M x |P| x |N|`` triplet tensor: with sorted negatives and their prefix sums,
``sum_{n: d_an < d_ap + m} (d_ap + m - d_an) = k (d_ap + m) - prefix_k`` for each positive.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from distcl.losses.batch import (
    GlobalBatch,
    full_precision,
    global_batch,
    positive_mask,
    same_id_mask,
)
from distcl.losses.distance import normalizes, pairwise_distance, row_distance
from distcl.losses.rowreduce import chunk_elements

MINING = ("batch_all", "batch_hard", "semi_hard")


@full_precision
def triplet_loss(
    views: Sequence[Tensor],
    labels: Tensor | None = None,
    *,
    margin: float = 0.2,
    distance: str = "cosine",
    mining: str = "batch_hard",
    chunk_size: int = 0,
) -> Tensor:
    """Triplet margin loss with the chosen mining (module docstring gives the formulas).

    Args:
        views: V >= 2 tensors, each ``B_local x D``.
        labels: ``B_local`` int64 class labels, or None (instance ids).
        margin: ``m >= 0``, in units of the distance (cosine distance is in ``[0, 2]``).
        distance: ``"cosine"`` or ``"euclidean"``.
        mining: ``"batch_all"``, ``"batch_hard"`` or ``"semi_hard"``.
        chunk_size: anchor rows per block for batch-hard mining; 0 = automatic.

    Returns:
        Scalar: mean over this rank's ``V * B_local`` anchors of ``l_a``.
    """
    if mining not in MINING:
        raise ValueError(
            f"loss.mining must be one of {', '.join(MINING)}, got {mining!r} "
            "(batch_hard is the usual choice)"
        )
    if margin < 0:
        raise ValueError(f"loss.margin must be >= 0, got {margin} (try 0.1 to 0.5)")
    batch = global_batch(views, labels, normalize=normalizes(distance))
    if mining == "batch_hard":
        return _batch_hard(batch, margin, distance, chunk_size)
    dist = pairwise_distance(batch.anchors, batch.columns, distance)  # M x K
    pos = positive_mask(batch)  # M x K
    neg = ~same_id_mask(batch)  # M x K
    n_pos = pos.sum(dim=1)  # M, >= 1
    n_neg = neg.sum(dim=1)  # M
    # Each row's negatives first, ascending; the other columns sit after them at a finite value
    # above every threshold used below, so searchsorted never counts them.
    tail = dist.detach().max() + margin + 1.0
    neg_sorted = torch.where(neg, dist, tail).sort(dim=1).values  # M x K
    keys = neg_sorted.detach().contiguous()
    if mining == "batch_all":
        per_anchor = _batch_all_rows(dist, neg_sorted, keys, n_neg, margin, pos)
        per_anchor = per_anchor / (n_pos * n_neg).clamp_min(1).to(dist.dtype)
    else:
        per_anchor = _semi_hard_rows(dist, neg_sorted, keys, n_neg, margin, pos)
        per_anchor = per_anchor / n_pos.to(dist.dtype)
    return per_anchor.mean()


def _batch_all_rows(
    dist: Tensor, neg_sorted: Tensor, keys: Tensor, n_neg: Tensor, margin: float, pos: Tensor
) -> Tensor:
    """``sum_p sum_n max(0, d_ap - d_an + m)`` per anchor, via sorted negatives: ``M``."""
    cols = torch.arange(dist.shape[1], device=dist.device)
    is_neg = cols.unsqueeze(0) < n_neg.unsqueeze(1)  # M x K, the sorted negatives
    prefix = torch.where(is_neg, neg_sorted, 0.0).cumsum(dim=1)  # M x K
    threshold = dist + margin  # M x K, one per (anchor, positive column)
    count = torch.searchsorted(keys, threshold.detach().contiguous())  # # of d_an < d_ap + m
    below = prefix.gather(1, (count - 1).clamp_min(0))
    below = torch.where(count > 0, below, 0.0)  # sum of those d_an
    per_pair = count.to(dist.dtype) * threshold - below  # M x K
    return torch.where(pos, per_pair, 0.0).sum(dim=1)


def _semi_hard_rows(
    dist: Tensor, neg_sorted: Tensor, keys: Tensor, n_neg: Tensor, margin: float, pos: Tensor
) -> Tensor:
    """``sum_p max(0, d_ap - d_{a n*} + m)`` per anchor with FaceNet's semi-hard ``n*``: ``M``."""
    first_farther = torch.searchsorted(keys, dist.detach().contiguous(), right=True)  # M x K
    last_neg = (n_neg - 1).clamp_min(0).unsqueeze(1)  # M x 1, the farthest negative
    choice = torch.where(first_farther < n_neg.unsqueeze(1), first_farther, last_neg)
    d_neg = neg_sorted.gather(1, choice)  # M x K
    cost = (dist - d_neg + margin).clamp_min(0)
    use = pos & (n_neg > 0).unsqueeze(1)
    return torch.where(use, cost, 0.0).sum(dim=1)


@torch.no_grad()
def _hardest_columns(
    batch: GlobalBatch, distance: str, chunk_size: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Farthest positive and closest negative column per anchor, in blocks: ``M``, ``M``, ``M``."""
    n_anchor, n_col = batch.anchors.shape[0], batch.columns.shape[0]
    chunk = chunk_size or max(1, chunk_elements(batch.columns.device) // max(1, n_col))
    hard_pos = torch.empty(n_anchor, dtype=torch.int64, device=batch.anchors.device)
    hard_neg = torch.empty_like(hard_pos)
    has_neg = torch.empty(n_anchor, dtype=torch.bool, device=batch.anchors.device)
    # Cosine ranks by similarity (farther = smaller <a, c>), which skips the 1 - s pass.
    by_sim = distance == "cosine"
    pos_fill, neg_fill = (torch.inf, -torch.inf) if by_sim else (-torch.inf, torch.inf)
    for start in range(0, n_anchor, chunk):
        stop = min(start + chunk, n_anchor)
        a = batch.anchors[start:stop]
        key = a @ batch.columns.T if by_sim else pairwise_distance(a, batch.columns, distance)
        same = batch.anchor_ids[start:stop].unsqueeze(1) == batch.column_ids.unsqueeze(0)
        pos_key = torch.where(same, key, pos_fill)  # c x K, non-positives never win
        pos_key[torch.arange(stop - start, device=key.device), batch.self_index[start:stop]] = (
            pos_fill
        )
        hard_pos[start:stop] = pos_key.argmin(dim=1) if by_sim else pos_key.argmax(dim=1)
        del pos_key
        neg_key = key.masked_fill_(same, neg_fill)  # in place: positives never win
        hard_neg[start:stop] = neg_key.argmax(dim=1) if by_sim else neg_key.argmin(dim=1)
        has_neg[start:stop] = ~same.all(dim=1)
    return hard_pos, hard_neg, has_neg


def _batch_hard(batch: GlobalBatch, margin: float, distance: str, chunk_size: int) -> Tensor:
    """Batch-hard loss: mine without autograd, then differentiate only the chosen distances."""
    hard_pos, hard_neg, has_neg = _hardest_columns(batch, distance, chunk_size)  # M each
    d_ap = row_distance(batch.anchors, batch.columns[hard_pos], distance)  # M
    d_an = row_distance(batch.anchors, batch.columns[hard_neg], distance)  # M
    cost = (d_ap - d_an + margin).clamp_min(0)
    return torch.where(has_neg, cost, 0.0).mean()
