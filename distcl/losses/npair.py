"""Multi-class N-pair loss with its L2 regulariser (Sohn 2016, "Improved Deep Metric Learning with
Multi-class N-pair Loss Objective").

On raw (unnormalised) embeddings ``f`` with inner-product similarity ``s_ak = <f_a, f_k>``,
positives ``P(a)`` (rows sharing ``a``'s id, not ``a``) and negatives ``N(a)`` (other ids):

    l_a = mean_{p in P(a)} log(1 + sum_{n in N(a)} exp(s_an - s_ap))
        = mean_{p in P(a)} softplus(logsumexp_{n in N(a)} s_an - s_ap)
    L   = mean over anchors a of l_a  +  l2_reg * mean over anchors a of ||f_a||^2

Sohn's batch holds N pairs from N classes and each anchor is scored against the other classes'
positives. Here every row of every view is an anchor and every row with another id is a
negative, which reduces to Sohn's loss (symmetrised) for 2 views of N distinct ids. The
regulariser keeps the unnormalised embeddings from growing without bound to shrink the loss
(Sohn 2016 regularises the embedding norm for this reason; ``l2_reg = 0.002`` is the distcl
config default, not tuned here).

Distributed: each rank's ``M = V*B`` local rows are anchors against the ``K = V*N`` gathered
global rows (``M x K`` similarities, O(local x global)). Both terms are means over local
anchors, so the mean over ranks equals the single-process loss and DDP's gradient averaging
gives the single-process gradients.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from distcl.losses.batch import (
    full_precision,
    global_batch,
    masked_fill_value,
    positive_mask,
    same_id_mask,
)


@full_precision
def npair_loss(
    views: Sequence[Tensor],
    labels: Tensor | None = None,
    *,
    l2_reg: float = 0.002,
) -> Tensor:
    """Multi-class N-pair loss plus ``l2_reg`` times the mean squared embedding norm.

    Args:
        views: V >= 2 tensors, each ``B_local x D`` (not normalised: the loss uses inner
            products, and the regulariser bounds the norm).
        labels: ``B_local`` int64 class labels, or None (instance ids).
        l2_reg: weight of the mean squared L2 norm of the embeddings (``>= 0``).

    Returns:
        Scalar: mean over this rank's ``V * B_local`` anchors of ``l_a``, plus the regulariser.
    """
    if l2_reg < 0:
        raise ValueError(f"loss.l2_reg must be >= 0, got {l2_reg} (Sohn 2016 uses 0.002)")
    batch = global_batch(views, labels, normalize=False)
    sim = batch.anchors @ batch.columns.T  # M x K
    pos = positive_mask(batch)  # M x K
    neg = ~same_id_mask(batch)  # M x K
    neg_lse = torch.logsumexp(sim.masked_fill(~neg, masked_fill_value(sim.dtype)), dim=1)  # M
    per_pair = F.softplus(neg_lse.unsqueeze(1) - sim, threshold=40.0)  # M x K
    # An anchor without negatives (a one-class batch) has neg_lse ~ -inf: softplus gives 0.
    per_anchor = torch.where(pos, per_pair, 0.0).sum(dim=1) / pos.sum(dim=1).to(sim.dtype)
    reg = batch.anchors.square().sum(dim=1)  # M
    return per_anchor.mean() + l2_reg * reg.mean()
