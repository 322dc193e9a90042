"""Distances used by the margin losses (contrastive, triplet): cosine or Euclidean.

- ``cosine``: ``d(a, c) = 1 - <a, c>`` on L2-normalised rows, in ``[0, 2]``; the losses normalise
  the rows first (``normalizes(kind)``), so the loss is invariant to the embedding norm.
- ``euclidean``: ``d(a, c) = ||a - c||_2`` on the raw rows (FaceNet, Schroff et al. 2015, uses it
  on L2-normalised embeddings; add that normalisation in the projection head if wanted).
"""

from __future__ import annotations

import torch
from torch import Tensor

DISTANCES = ("cosine", "euclidean")


def check_distance(kind: str) -> None:
    """Raise ValueError naming the setting when ``kind`` is not a known distance."""
    if kind not in DISTANCES:
        raise ValueError(
            f"loss.distance must be one of {', '.join(DISTANCES)}, got {kind!r} "
            "(cosine is the usual choice for projection-head embeddings)"
        )


def normalizes(kind: str) -> bool:
    """Whether rows are L2-normalised before this distance is taken."""
    check_distance(kind)
    return kind == "cosine"


def pairwise_distance(anchors: Tensor, columns: Tensor, kind: str) -> Tensor:
    """All distances: ``anchors`` ``M x D``, ``columns`` ``K x D`` -> ``M x K``.

    Cosine expects normalised rows. Euclidean uses ``torch.cdist``, whose backward gives a zero
    (not NaN) gradient at zero distance, e.g. an anchor against its own column.
    """
    if kind == "cosine":
        return 1.0 - anchors @ columns.T
    check_distance(kind)
    return torch.cdist(anchors, columns)


def row_distance(anchors: Tensor, others: Tensor, kind: str) -> Tensor:
    """Row-by-row distances: ``anchors`` ``M x D``, ``others`` ``M x D`` -> ``M``."""
    if kind == "cosine":
        return 1.0 - (anchors * others).sum(dim=1)
    check_distance(kind)
    return torch.linalg.vector_norm(anchors - others, dim=1)
