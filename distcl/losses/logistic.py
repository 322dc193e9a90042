"""Pairwise sigmoid (logistic) loss with a learnable temperature and bias (SigLIP: Zhai, Mustafa,
Kolesnikov and Beyer 2023, "Sigmoid Loss for Language Image Pre-Training").

Every pair of distinct rows is an independent binary same/different decision. With
L2-normalised rows, ``x_ak = t * <z_a, z_k> + b`` and ``y_ak = +1`` for positives (rows sharing
``a``'s id, not ``a``), ``-1`` for negatives (other ids):

    l_a = sum_{k != a} -log sigmoid(y_ak * x_ak) = sum_{k != a} softplus(-y_ak * x_ak)
    L   = mean over anchors a of l_a                             (SigLIP: -1/|B| sum_i sum_j)

``t = exp(t')`` with ``t'`` and ``b`` learned; SigLIP initialises ``t = 10`` and ``b = -10`` so
the many negatives start near the right answer and the loss does not open with a huge
correction. Here the positives are the other views (or same-class rows), not an image-text pair.

Distributed: each rank's ``M = V*B`` local rows are anchors against the ``K = V*N`` gathered
global rows (``gather_with_grad``). The local loss is the mean over local anchors, so the mean
over ranks is the single-process loss; DDP's averaging gives the single-process gradients for
the embeddings, and the training loop must average ``t'`` and ``b``'s gradients the same way if
the loss module sits outside DDP. The all-pairs softplus sum is fused and chunked
(``rowreduce.py``, O(chunk x K) memory); the sign ``y`` is decided block by block from the ids,
so no ``M x K`` mask or logit matrix is stored.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from distcl.losses.batch import full_precision, global_batch
from distcl.losses.rowreduce import as_scalar, similarity_row_reduce


@full_precision
def sigmoid_pairwise_loss(
    views: Sequence[Tensor],
    labels: Tensor | None = None,
    *,
    log_temperature: Tensor | float,
    bias: Tensor | float,
    chunk_size: int = 0,
) -> Tensor:
    """SigLIP's pairwise sigmoid loss over all pairs of distinct rows (module docstring).

    Args:
        views: V >= 2 tensors, each ``B_local x D`` (rows are L2-normalised here).
        labels: ``B_local`` int64 class labels, or None (instance ids).
        log_temperature: ``t'``, with ``t = exp(t')``; a 0-d tensor receives a gradient.
        bias: ``b``; a 0-d tensor receives a gradient.
        chunk_size: anchor rows per block of the fused softplus sum; 0 = automatic.

    Returns:
        Scalar: mean over this rank's ``V * B_local`` anchors of ``l_a``.
    """
    batch = global_batch(views, labels, normalize=True)
    like = batch.anchors
    # Cast the (fp32) parameters to the embeddings' dtype before exp: fp64 runs stay fp64.
    log_t = as_scalar(log_temperature, like)
    b = as_scalar(bias, like)
    per_anchor = similarity_row_reduce(
        batch.anchors,
        batch.columns,
        batch.self_index,
        scale=log_t.exp(),
        bias=b,
        kind="logistic",
        anchor_ids=batch.anchor_ids,
        column_ids=batch.column_ids,
        chunk_size=chunk_size,
    )  # M: sum_k softplus(-y_ak x_ak)
    return per_anchor.mean()


class LogisticLoss(nn.Module):
    """Module holding SigLIP's learnable ``t'`` (log temperature) and bias as parameters.

    Args:
        sigmoid_t_init: initial temperature ``t = exp(t')`` (> 0; SigLIP: 10).
        sigmoid_b_init: initial bias ``b`` (SigLIP: -10).
    """

    def __init__(self, sigmoid_t_init: float = 10.0, sigmoid_b_init: float = -10.0) -> None:
        super().__init__()
        if not sigmoid_t_init > 0:
            raise ValueError(
                f"loss.sigmoid_t_init must be > 0, got {sigmoid_t_init} (SigLIP uses 10.0)"
            )
        self.log_temperature = nn.Parameter(torch.tensor(math.log(sigmoid_t_init)))
        self.bias = nn.Parameter(torch.tensor(float(sigmoid_b_init)))

    def forward(self, views: Sequence[Tensor], labels: Tensor | None = None) -> Tensor:
        """``views``: V tensors ``B_local x D``; ``labels``: ``B_local`` or None -> scalar."""
        return sigmoid_pairwise_loss(
            views, labels, log_temperature=self.log_temperature, bias=self.bias
        )
