"""Margin contrastive loss (Hadsell, Chopra and LeCun 2006, "Dimensionality Reduction by Learning
an Invariant Mapping"), with a positive and a negative margin.

With distance ``d`` (cosine ``1 - cos`` or Euclidean, see ``distance.py``), positives ``P(a)``
(rows sharing ``a``'s id, not ``a``) and negatives ``N(a)`` (rows with another id):

    l_a = mean_{p in P(a)} 1/2 * max(0, d_ap - m_pos)^2  +  mean_{n in N(a)} 1/2 * max(0, m_neg - d_an)^2
    L   = mean over anchors a of l_a

Hadsell's form is ``m_pos = 0`` (pull positives together) with a hinge pushing negatives beyond
``m_neg``; ``m_pos > 0`` stops pulling positives once they are that close. Each anchor averages
its positives and its negatives separately, so the two terms keep the same weight whatever the
ratio of positives to negatives (an anchor with no negative, e.g. a one-class batch, gets 0 for
that term).

Distributed: each rank's ``M = V*B`` local rows are anchors against the ``K = V*N`` gathered
global rows; the ``M x K`` distances are O(local x global). The local loss is the mean over local
anchors, so the mean over ranks equals the single-process loss and DDP's gradient averaging
gives the single-process gradients.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from distcl.losses.batch import full_precision, global_batch, positive_mask, same_id_mask
from distcl.losses.distance import normalizes, pairwise_distance


@full_precision
def contrastive_loss(
    views: Sequence[Tensor],
    labels: Tensor | None = None,
    *,
    pos_margin: float = 0.0,
    neg_margin: float = 0.5,
    distance: str = "cosine",
) -> Tensor:
    """Hadsell et al. 2006 margin loss over all positive and negative pairs of each anchor.

    Args:
        views: V >= 2 tensors, each ``B_local x D``.
        labels: ``B_local`` int64 class labels, or None (instance ids).
        pos_margin: positives closer than this cost nothing (``>= 0``).
        neg_margin: negatives farther than this cost nothing (``>= 0``; cosine distance is in
            ``[0, 2]``).
        distance: ``"cosine"`` or ``"euclidean"``.

    Returns:
        Scalar: mean over this rank's ``V * B_local`` anchors of ``l_a`` (module docstring).
    """
    for name, value in (("pos_margin", pos_margin), ("neg_margin", neg_margin)):
        if value < 0:
            raise ValueError(f"loss.{name} must be >= 0, got {value} (try 0.0 to 1.0)")
    batch = global_batch(views, labels, normalize=normalizes(distance))
    dist = pairwise_distance(batch.anchors, batch.columns, distance)  # M x K
    pos = positive_mask(batch)  # M x K
    neg = ~same_id_mask(batch)  # M x K
    zero = dist.new_zeros(())
    pos_cost = torch.where(pos, 0.5 * (dist - pos_margin).clamp_min(0).square(), zero)
    neg_cost = torch.where(neg, 0.5 * (neg_margin - dist).clamp_min(0).square(), zero)
    n_pos = pos.sum(dim=1).to(dist.dtype)  # >= 1: another view of the same image
    n_neg = neg.sum(dim=1).clamp_min(1).to(dist.dtype)
    return (pos_cost.sum(dim=1) / n_pos + neg_cost.sum(dim=1) / n_neg).mean()
