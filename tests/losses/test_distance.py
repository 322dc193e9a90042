"""Cosine and Euclidean distances: pairwise and row-wise agree, zero distance has no NaN grad."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from distcl.losses.distance import check_distance, pairwise_distance, row_distance


@pytest.mark.parametrize("kind", ["cosine", "euclidean"])
def test_pairwise_matches_rowwise(kind):
    gen = torch.Generator().manual_seed(0)
    a = F.normalize(torch.randn(4, 3, generator=gen, dtype=torch.float64), dim=1)
    c = F.normalize(torch.randn(6, 3, generator=gen, dtype=torch.float64), dim=1)
    full = pairwise_distance(a, c, kind)
    for j in range(6):
        torch.testing.assert_close(full[:, j], row_distance(a, c[j].expand(4, 3), kind))


@pytest.mark.parametrize("kind", ["cosine", "euclidean"])
def test_zero_distance_has_finite_gradient(kind):
    a = torch.tensor([[0.6, 0.8]], dtype=torch.float64, requires_grad=True)
    for dist in (pairwise_distance(a, a, kind).sum(), row_distance(a, a, kind).sum()):
        (grad,) = torch.autograd.grad(dist, a)
        assert torch.isfinite(grad).all()


def test_unknown_distance_is_named():
    with pytest.raises(
        ValueError, match="loss.distance must be one of cosine, euclidean, got 'l1'"
    ):
        check_distance("l1")
