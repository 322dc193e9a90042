"""Fused, chunked row reductions of a similarity matrix that is never stored whole.

For anchors ``A`` (``M x D``), columns ``C`` (``K x D``), a scale ``t`` and bias ``b``:

    x_ak = t * <A_a, C_k> + b            for every column k except the anchor's own, self(a)
    out_a = logsumexp_k x_ak                             kind="logsumexp" (InfoNCE denominator)
    out_a = sum_k softplus(-y_ak x_ak) = -log sigmoid(y_ak x_ak)
                                                         kind="logistic"  (SigLIP), where
            y_ak = +1 when anchor and column share an id, else -1

A plain autograd graph would keep the ``M x K`` logits (plus masks and softmax temporaries)
alive until backward. Here the forward pass walks over blocks of anchor rows and keeps only
``out`` (``M``); the backward pass recomputes each block's logits, turns them in place into
the softmax (or sigmoid) weights, and accumulates the gradients of ``A``, ``C``, ``t`` and
``b`` with two matmuls (the incoming per-row gradient is folded into the ``chunk x D``
operands, not the ``chunk x K`` block). Peak memory is O(chunk x K) instead of several
``M x K`` matrices, for one extra ``chunk x K x D`` matmul per block. The self column gets a
large negative logit (not -inf), so its weight is exactly 0 without NaNs. The logistic kind
flips the sign of same-id logits inside each block (a ``chunk x K`` id comparison, no stored
mask), so well-separated positives cost ``softplus(-x)`` exactly instead of the cancelling
``softplus(x) - x``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from distcl.losses.batch import masked_fill_value

KINDS = ("logsumexp", "logistic")
# Logits per block: 4M (16 MiB in fp32). Single-threaded on this shared 2-core CPU, blocks of
# 2^19 to 2^23 logits differed by less than the run-to-run noise at 2N = 4096 and 16384
# (benchmarks/bench_loss.py); larger blocks mean fewer thread-pool synchronisations, which
# mattered with 2 threads while other jobs were using the cores.
CHUNK_ELEMENTS = 1 << 22
# On a GPU, blocks of 4M logits cut a 64k x 64k NT-Xent into 1,024 blocks of small kernels;
# 64M logits (256 MiB in fp32, one block and its softmax alive at a time) keep the matmuls large
# while staying a small share of any training GPU's memory. Not measured: no GPU was available.
CHUNK_ELEMENTS_CUDA = 1 << 26


def chunk_elements(device: torch.device) -> int:
    """Logits per block of the fused row reductions on `device` (see CHUNK_ELEMENTS)."""
    return CHUNK_ELEMENTS_CUDA if device.type == "cuda" else CHUNK_ELEMENTS


def _block_logits(
    a_scaled: Tensor,
    columns: Tensor,
    self_cols: Tensor,
    shift: Tensor | None,
    same: Tensor | None,
) -> Tensor:
    """``a_scaled @ columns.T + shift``, negated where ``same`` (logistic), self masked: ``c x K``.

    ``shift`` is the bias (0-d) or a per-row ``c x 1`` offset, added inside the matmul (addmm).
    """
    x = a_scaled @ columns.T if shift is None else torch.addmm(shift, a_scaled, columns.T)
    if same is not None:
        x = torch.where(same, -x, x)  # u = -y * x: the argument of softplus
    rows = torch.arange(a_scaled.shape[0], device=x.device)
    x[rows, self_cols] = masked_fill_value(x.dtype)
    return x


def _logsumexp_(x: Tensor) -> Tensor:
    """Row-wise logsumexp that reuses ``x`` (``c x K``) as scratch: no extra ``c x K`` buffer."""
    top = x.amax(dim=1, keepdim=True)  # c x 1; finite: every row has a non-self column
    return x.sub_(top).exp_().sum(dim=1).log_().add_(top.squeeze(1))


def _softplus_sum(x: Tensor) -> Tensor:
    """``sum_k log(1 + exp(x_k))`` per row, exact for large ``|x|`` (no threshold cut-off)."""
    return (x.clamp_min(0) + torch.log1p(torch.exp(-x.abs()))).sum(dim=1)


def _same_block(ids: tuple[Tensor, Tensor] | None, start: int, stop: int) -> Tensor | None:
    """``c x K`` bool, anchor id == column id, for one block (None for logsumexp)."""
    if ids is None:
        return None
    return ids[0][start:stop].unsqueeze(1) == ids[1].unsqueeze(0)


class _SimilarityRowReduce(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        anchors: Tensor,
        columns: Tensor,
        scale: Tensor,
        bias: Tensor | None,
        self_index: Tensor,
        ids: tuple[Tensor, Tensor] | None,
        chunk: int,
    ) -> Tensor:
        out = anchors.new_empty(anchors.shape[0])  # M
        for start in range(0, anchors.shape[0], chunk):
            stop = start + chunk
            a_scaled = anchors[start:stop] * scale  # c x D: the scale costs c x D, not c x K
            same = _same_block(ids, start, stop)
            x = _block_logits(a_scaled, columns, self_index[start:stop], bias, same)  # c x K
            out[start:stop] = _logsumexp_(x) if ids is None else _softplus_sum(x)
        ctx.save_for_backward(anchors, columns, scale, bias, self_index, out)
        ctx.ids, ctx.chunk = ids, chunk
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        anchors, columns, scale, bias, self_index, out = ctx.saved_tensors
        need_a, need_c, need_s, need_b = ctx.needs_input_grad[:4]
        grad_a = torch.empty_like(anchors) if need_a else None
        grad_c = torch.zeros_like(columns) if need_c else None
        grad_s = anchors.new_zeros(())
        grad_b = anchors.new_zeros(())
        for start in range(0, anchors.shape[0], ctx.chunk):
            stop = start + ctx.chunk
            a = anchors[start:stop]  # c x D
            g = grad_out[start:stop].unsqueeze(1)  # c x 1, dL/dout
            same = _same_block(ctx.ids, start, stop)
            if same is None:  # w = softmax: exp(x - out), the shift fused into the matmul
                shift = -out[start:stop].unsqueeze(1)
                shift = shift if bias is None else shift + bias
                w = _block_logits(a * scale, columns, self_index[start:stop], shift, None)
                w.exp_()  # c x K; the self column is exactly 0
            else:  # w = d softplus(u) / dx = -y * sigmoid(u), u = -y * x
                u = _block_logits(a * scale, columns, self_index[start:stop], bias, same)
                w = u.sigmoid_()
                w = torch.where(same, -w, w)
            # dL/dx = g * w; g is folded into the c x D operands instead of the c x K matrix.
            if need_b:
                grad_b += (w.sum(dim=1, keepdim=True) * g).sum()
            if need_a or need_s:
                g_a = (w @ columns) * g  # c x D: dL/da before the scale
                if need_s:  # dL/dt = sum_ak dL/dx_ak <a, c_k> = sum_a <a, g_a>
                    grad_s += (a * g_a).sum()
                if need_a:
                    grad_a[start:stop] = g_a * scale
            if need_c:
                grad_c.addmm_(w.T, a * g)  # K x D, before the scale
        if need_c:
            grad_c.mul_(scale)
        return (
            grad_a,
            grad_c,
            grad_s.to(scale.dtype) if need_s else None,
            grad_b.to(bias.dtype) if need_b else None,
            None,
            None,
            None,
        )


def as_scalar(value: float | Tensor, like: Tensor) -> Tensor:
    """0-d tensor in ``like``'s dtype/device; a tensor keeps its autograd history."""
    if isinstance(value, Tensor):
        return value.reshape(()).to(dtype=like.dtype, device=like.device)
    return torch.tensor(float(value), dtype=like.dtype, device=like.device)


def similarity_row_reduce(
    anchors: Tensor,
    columns: Tensor,
    self_index: Tensor,
    *,
    scale: float | Tensor,
    bias: float | Tensor | None = None,
    kind: str = "logsumexp",
    anchor_ids: Tensor | None = None,
    column_ids: Tensor | None = None,
    chunk_size: int = 0,
) -> Tensor:
    """Per-anchor reduction of scaled similarities over all columns but its own (see module doc).

    Args:
        anchors: ``M x D`` local rows.
        columns: ``K x D`` global rows (may come from ``gather_with_grad``).
        self_index: ``M`` int64, the column holding each anchor (excluded from its row).
        scale: ``t`` (e.g. ``1 / temperature``); a 0-d tensor gets a gradient if it requires one.
        bias: ``b`` or None (no bias); a 0-d tensor gets a gradient if it requires one.
        kind: ``"logsumexp"`` or ``"logistic"``.
        anchor_ids, column_ids: ``M`` and ``K`` int64 ids; required by ``"logistic"``
            (same id -> ``y = +1``), ignored by ``"logsumexp"``.
        chunk_size: anchor rows per block; 0 picks ``chunk_elements(device) // K``.

    Returns:
        ``M`` values, differentiable w.r.t. anchors, columns, scale and bias.
    """
    if kind not in KINDS:
        raise ValueError(f"similarity_row_reduce kind must be one of {KINDS}, got {kind!r}")
    if chunk_size < 0:
        raise ValueError(f"chunk_size must be >= 0 (0 = automatic), got {chunk_size}")
    ids = None
    if kind == "logistic":
        if anchor_ids is None or column_ids is None:
            raise ValueError("kind='logistic' needs anchor_ids and column_ids (same id: y = +1)")
        ids = (anchor_ids, column_ids)
    chunk = chunk_size or max(1, chunk_elements(anchors.device) // max(1, columns.shape[0]))
    return _SimilarityRowReduce.apply(
        anchors,
        columns,
        as_scalar(scale, anchors),
        None if bias is None else as_scalar(bias, anchors),
        self_index,
        ids,
        chunk,
    )
