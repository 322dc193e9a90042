"""NT-Xent / InfoNCE (multi-view, multi-positive) and SupCon, sharing one core.

Papers: van den Oord et al. 2018, "Representation Learning with Contrastive Predictive Coding"
(InfoNCE); Chen et al. 2020, "A Simple Framework for Contrastive Learning of Visual
Representations" (SimCLR, NT-Xent); Khosla et al. 2020, "Supervised Contrastive Learning"
(SupCon, the L_out form: the mean over positives sits outside the log).

With L2-normalised rows, temperature ``tau``, positives ``P(a)`` (rows sharing ``a``'s id, not
``a`` itself) and all other rows ``A(a)`` (every row except ``a``):

    l_a = logsumexp_{k in A(a)} (<z_a, z_k> / tau)  -  (1 / |P(a)|) sum_{p in P(a)} <z_a, z_p> / tau
    L   = mean over anchors a of l_a

NT-Xent is the case where the id is the image (2 views: one positive, 2N - 2 negatives; V views:
V - 1 positives). SupCon is the same formula where the id is the class label, so both share
:func:`info_nce_loss`; it is NT-Xent with a label mask, not a copy.

Distributed: each rank's ``M = V*B`` local rows are anchors against the ``K = V*N`` gathered
global rows (``gather_with_grad``; labels are gathered with ``gather_no_grad``). The local loss is
the mean over local anchors, so the mean of the local losses over ranks is the single-process
loss and DDP's gradient averaging gives the single-process gradient. The denominator is a fused,
chunked logsumexp (O(chunk x K) memory, see ``rowreduce.py``); the positive term is linear in
the positives, so it uses per-id column sums (O(M x D), no ``M x K`` mask).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from distcl.losses.batch import full_precision, global_batch, positive_sums
from distcl.losses.rowreduce import similarity_row_reduce


def check_temperature(temperature: float) -> None:
    """Raise ValueError naming the setting when the temperature is not positive."""
    if not temperature > 0:
        raise ValueError(f"loss.temperature must be > 0, got {temperature} (try 0.1 to 0.5)")


@full_precision
def ntxent_loss(
    views: Sequence[Tensor],
    labels: Tensor | None = None,
    *,
    temperature: float = 0.2,
    chunk_size: int = 0,
) -> Tensor:
    """InfoNCE over V >= 2 views; positives share an id (instance, or class when labelled).

    NT-Xent (SimCLR) is this function, also exported as :func:`info_nce_loss`.

    Args:
        views: V tensors, each ``B_local x D`` (any norm; rows are L2-normalised here).
        labels: ``B_local`` int64 class labels (SupCon), or None (instance ids, NT-Xent).
        temperature: ``tau`` > 0 (SimCLR compares 0.05 to 1 in Table 5; 0.1 to 0.5 is usual).
        chunk_size: anchor rows per block of the fused logsumexp; 0 = automatic.

    Returns:
        Scalar: mean over this rank's ``V * B_local`` anchors of ``l_a`` (module docstring).
    """
    check_temperature(temperature)
    batch = global_batch(views, labels, normalize=True)
    scale = 1.0 / temperature
    log_denominator = similarity_row_reduce(
        batch.anchors, batch.columns, batch.self_index, scale=scale, chunk_size=chunk_size
    )  # M
    pos_sum, pos_count = positive_sums(batch)  # M x D, M (>= 1: another view always exists)
    pos_logit = (batch.anchors * pos_sum).sum(dim=1) * scale / pos_count  # M
    return (log_denominator - pos_logit).mean()


info_nce_loss = ntxent_loss  # the general name: labels make the positives classes (SupCon)


@full_precision
def supcon_loss(
    views: Sequence[Tensor],
    labels: Tensor | None,
    *,
    temperature: float = 0.2,
    chunk_size: int = 0,
) -> Tensor:
    """Supervised contrastive loss (Khosla et al. 2020): :func:`info_nce_loss` with labels.

    Raises ValueError when ``labels`` is None: SupCon without labels would silently be NT-Xent.
    """
    if labels is None:
        raise ValueError(
            "loss.name=supcon needs class labels, got labels=None "
            "(use a labelled dataset, or loss.name=ntxent for a label-free run)"
        )
    return ntxent_loss(views, labels, temperature=temperature, chunk_size=chunk_size)
