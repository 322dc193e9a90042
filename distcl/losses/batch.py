"""Global layout shared by every loss: local anchor rows against gathered global columns.

Calling convention (all losses): ``views`` is a sequence of ``V >= 2`` tensors, each
``B x D`` (view ``v`` of the same ``B`` local images, same row order), and ``labels`` is ``B``
int64 class labels or None. With ``W`` ranks, ``N = W * B`` images are in the global batch.

- Anchors: this rank's ``M = V * B`` rows, view-major (``[view 0 rows, view 1 rows, ...]``).
- Columns: the ``K = V * N`` global rows, view-major, gathered with
  :func:`distcl.runtime.dist.gather_with_grad` (one collective for all views), so gradients reach the
  rank that owns each row.
- Ids: the class label when labels are given, else the global instance index
  ``rank_offset(B) + i``, the same for every view of an image. Rows that share an id are
  positives; rows with different ids are negatives; a row is never its own positive or negative
  (``self_index`` names the column that holds each anchor).

Every loss is a mean over its local anchors, so the mean over ranks of the local losses is the
single-process loss over the global batch, and DDP's gradient averaging reproduces the
single-process gradients. Memory is O(M x K) = O(local x global), never O(global^2).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from distcl.runtime import dist


def full_precision(loss_fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """Run ``loss_fn(views, labels, **kw)`` in float32 even inside a bf16/fp16 autocast region.

    Casting the embeddings with ``.float()`` is not enough: autocast still runs the similarity
    matmuls in bf16 (8-bit mantissa, ~0.4% error per logit; at T = 0.1 over thousands of
    negatives that is a visibly different loss and gradient). Autocast is turned off for the
    loss's device type, and half/bf16 views are cast to float32; float64 views stay float64.
    """

    @functools.wraps(loss_fn)
    def wrapper(views: Sequence[Tensor], labels: Tensor | None = None, **kwargs) -> Tensor:
        half = (torch.float16, torch.bfloat16)
        views = [v.float() if v.dtype in half else v for v in views]
        device_type = views[0].device.type if views else "cpu"
        with torch.autocast(device_type, enabled=False):
            return loss_fn(views, labels, **kwargs)

    return wrapper


@dataclass(frozen=True)
class GlobalBatch:
    """Local anchors against global columns (shapes: M = V*B local rows, K = V*N global rows)."""

    anchors: Tensor  # M x D, this rank's rows of every view, view-major
    columns: Tensor  # K x D, every rank's rows of every view, view-major, gradient-carrying
    anchor_ids: Tensor  # M, int64 positive-group id of each anchor
    column_ids: Tensor  # K, int64 positive-group id of each column
    self_index: Tensor  # M, int64 column index that holds each anchor itself


def check_views(views: Sequence[Tensor], labels: Tensor | None) -> None:
    """Raise ValueError naming the problem when views/labels break the calling convention."""
    if len(views) < 2:
        raise ValueError(
            f"contrastive losses need >= 2 views of each image, got {len(views)} "
            "(set data.views to 2 or more)"
        )
    first = views[0]
    if first.ndim != 2:
        raise ValueError(f"each view must be B x D embeddings, got shape {tuple(first.shape)}")
    for v, x in enumerate(views):
        if x.shape != first.shape:
            raise ValueError(
                f"all views must have the same B x D shape, view 0 is {tuple(first.shape)} "
                f"but view {v} is {tuple(x.shape)}"
            )
    if labels is not None and tuple(labels.shape) != (first.shape[0],):
        raise ValueError(
            f"labels must be a 1-D tensor of B={first.shape[0]} class ids, "
            f"got shape {tuple(labels.shape)}"
        )


def global_batch(
    views: Sequence[Tensor], labels: Tensor | None = None, *, normalize: bool
) -> GlobalBatch:
    """Build the local-anchor / global-column layout (see the module docstring).

    Args:
        views: V tensors, each ``B x D``.
        labels: ``B`` int64 class labels, or None for instance discrimination.
        normalize: L2-normalise rows first (cosine similarity / distance losses).
    """
    check_views(views, labels)
    n_views, local_n = len(views), views[0].shape[0]
    world = dist.get_world_size()
    offset = dist.rank_offset(local_n)
    device = views[0].device

    local = torch.stack(list(views), dim=1)  # B x V x D
    if normalize:
        local = F.normalize(local, dim=-1)
    anchors = local.transpose(0, 1).reshape(n_views * local_n, -1)  # M x D
    gathered = dist.gather_with_grad(local)  # N x V x D, rank order
    columns = gathered.transpose(0, 1).reshape(n_views * local_n * world, -1)  # K x D

    if labels is None:
        local_ids = offset + torch.arange(local_n, device=device)
        global_ids = torch.arange(local_n * world, device=device)
    else:
        local_ids = labels.to(device=device, dtype=torch.int64)
        global_ids = dist.gather_no_grad(local_ids)
    view_base = torch.arange(n_views, device=device).unsqueeze(1) * (local_n * world)  # V x 1
    self_index = (view_base + offset + torch.arange(local_n, device=device)).reshape(-1)
    return GlobalBatch(
        anchors=anchors,
        columns=columns,
        anchor_ids=local_ids.repeat(n_views),
        column_ids=global_ids.repeat(n_views),
        self_index=self_index,
    )


def same_id_mask(batch: GlobalBatch) -> Tensor:
    """``M x K`` bool: True where anchor and column share an id (includes the self column)."""
    return batch.anchor_ids.unsqueeze(1) == batch.column_ids.unsqueeze(0)


def positive_mask(batch: GlobalBatch) -> Tensor:
    """``M x K`` bool: True for an anchor's positives (same id, not itself)."""
    mask = same_id_mask(batch)
    rows = torch.arange(mask.shape[0], device=mask.device)
    mask[rows, batch.self_index] = False
    return mask


def positive_sums(batch: GlobalBatch) -> tuple[Tensor, Tensor]:
    """Sum of each anchor's positive columns and their count, without an ``M x K`` mask.

    Columns are summed per id once (``U x D`` for ``U`` distinct ids), then each anchor takes its
    id's sum minus its own column. Any term linear in the positives' similarities,
    ``sum_p <a, c_p> = <a, sum_p c_p>``, then costs O(M x D) instead of O(M x K).

    Returns:
        ``M x D`` sums (gradient flows to the columns) and ``M`` counts (dtype of the columns).
    """
    uniq, inverse = torch.unique(batch.column_ids, return_inverse=True)
    cols = batch.columns
    sums = cols.new_zeros(uniq.shape[0], cols.shape[1]).index_add(0, inverse, cols)  # U x D
    counts = torch.bincount(inverse, minlength=uniq.shape[0])  # U
    anchor_group = torch.searchsorted(uniq, batch.anchor_ids)  # M
    pos_sums = sums[anchor_group] - cols[batch.self_index]  # M x D
    pos_counts = (counts[anchor_group] - 1).to(cols.dtype)  # M
    return pos_sums, pos_counts


def masked_fill_value(dtype: torch.dtype) -> float:
    """A large negative logit that exp() turns into exactly 0 without -inf's NaN gradients."""
    return -0.25 * torch.finfo(dtype).max
