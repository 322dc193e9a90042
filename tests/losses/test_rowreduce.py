"""Fused chunked row reductions: values and every gradient against a direct computation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from distcl.losses.rowreduce import similarity_row_reduce


def _inputs(seed: int, m: int = 5, k: int = 9, d: int = 3):
    gen = torch.Generator().manual_seed(seed)
    anchors = torch.randn(m, d, generator=gen, dtype=torch.float64, requires_grad=True)
    columns = torch.randn(k, d, generator=gen, dtype=torch.float64, requires_grad=True)
    scale = torch.tensor(1.7, dtype=torch.float64, requires_grad=True)
    bias = torch.tensor(-0.4, dtype=torch.float64, requires_grad=True)
    self_index = torch.randperm(k, generator=gen)[:m]
    anchor_ids = torch.randint(0, 3, (m,), generator=gen)
    column_ids = torch.randint(0, 3, (k,), generator=gen)
    return anchors, columns, scale, bias, self_index, anchor_ids, column_ids


def _direct(kind, anchors, columns, scale, bias, self_index, anchor_ids, column_ids):
    """The obvious M x K computation, row by row."""
    out = []
    for a in range(anchors.shape[0]):
        keep = [k for k in range(columns.shape[0]) if k != self_index[a]]
        x = scale * (columns[keep] @ anchors[a]) + bias
        if kind == "logsumexp":
            out.append(torch.logsumexp(x, dim=0))
        else:
            y = (column_ids[keep] == anchor_ids[a]).to(x.dtype) * 2 - 1
            out.append(-F.logsigmoid(y * x).sum())
    return torch.stack(out)


@pytest.mark.parametrize("kind", ["logsumexp", "logistic"])
@pytest.mark.parametrize("chunk_size", [0, 1, 2, 5])
def test_values_and_gradients_match_direct(kind, chunk_size):
    anchors, columns, scale, bias, self_index, a_ids, c_ids = _inputs(seed=chunk_size)
    weights = torch.linspace(0.5, 2.0, anchors.shape[0], dtype=torch.float64)
    leaves = (anchors, columns, scale, bias)
    ids = {"anchor_ids": a_ids, "column_ids": c_ids, "chunk_size": chunk_size}
    got = similarity_row_reduce(
        anchors, columns, self_index, scale=scale, bias=bias, kind=kind, **ids
    )
    want = _direct(kind, anchors, columns, scale, bias, self_index, a_ids, c_ids)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)
    got_grads = torch.autograd.grad((got * weights).sum(), leaves)
    want_grads = torch.autograd.grad((want * weights).sum(), leaves)
    for g, w in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("kind", ["logsumexp", "logistic"])
def test_gradcheck(kind):
    anchors, columns, scale, bias, self_index, a_ids, c_ids = _inputs(seed=11, m=3, k=5)

    def fn(a, c, s, b):
        return similarity_row_reduce(
            a,
            c,
            self_index,
            scale=s,
            bias=b,
            kind=kind,
            anchor_ids=a_ids,
            column_ids=c_ids,
            chunk_size=2,
        )

    assert torch.autograd.gradcheck(fn, (anchors, columns, scale, bias))


def test_float_scale_and_unneeded_gradients():
    anchors, columns, *_ = _inputs(seed=3)
    frozen = columns.detach()
    out = similarity_row_reduce(anchors, frozen, torch.arange(5), scale=2.0)
    (grad,) = torch.autograd.grad(out.sum(), anchors)
    assert grad.shape == anchors.shape and torch.isfinite(grad).all()


def test_bad_arguments_are_named():
    anchors, columns, *_ = _inputs(seed=4)
    with pytest.raises(ValueError, match="kind must be one of"):
        similarity_row_reduce(anchors, columns, torch.arange(5), scale=1.0, kind="mean")
    with pytest.raises(ValueError, match="needs anchor_ids and column_ids"):
        similarity_row_reduce(anchors, columns, torch.arange(5), scale=1.0, kind="logistic")
    with pytest.raises(ValueError, match="chunk_size must be >= 0"):
        similarity_row_reduce(anchors, columns, torch.arange(5), scale=1.0, chunk_size=-1)
