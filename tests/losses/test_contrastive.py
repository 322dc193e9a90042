"""Margin contrastive loss: naive reference, world sizes 1/2/4, and properties."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

from distcl.losses import build_loss, contrastive_loss

from .multiproc import cases_for
from .properties import assert_loss_falls, assert_norm_invariant, assert_permutation_invariant
from .reference import pair_distance, reference_test, stacked

CASES = cases_for("contrastive")


def reference(
    views: list[Tensor],
    labels: Tensor | None,
    *,
    pos_margin: float,
    neg_margin: float,
    distance: str,
) -> Tensor:
    """Full distance matrix; per anchor the mean positive and mean negative hinge^2 / 2."""
    z, ids = stacked(views, labels, normalize=distance == "cosine")
    total = z.new_zeros(())
    for a in range(len(z)):
        pos_terms, neg_terms = [], []
        for k in range(len(z)):
            if k == a:
                continue
            d = pair_distance(z, a, k, distance)
            if ids[k] == ids[a]:
                pos_terms.append(0.5 * torch.relu(d - pos_margin) ** 2)
            else:
                neg_terms.append(0.5 * torch.relu(neg_margin - d) ** 2)
        total = total + sum(pos_terms) / len(pos_terms)
        if neg_terms:
            total = total + sum(neg_terms) / len(neg_terms)
    return total / len(z)


test_matches_reference_and_single_process = reference_test(CASES, reference)


def test_margins_switch_terms_off():
    # Far-apart negatives and identical positives cost nothing.
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    assert contrastive_loss([a, a.clone()], neg_margin=0.9).item() == 0.0
    assert contrastive_loss([a, a.clone()], neg_margin=1.1).item() > 0.0


def test_bad_settings_are_named():
    views = [torch.randn(4, 3), torch.randn(4, 3)]
    with pytest.raises(ValueError, match="loss.neg_margin must be >= 0, got -1"):
        contrastive_loss(views, neg_margin=-1)
    with pytest.raises(ValueError, match="loss.distance must be one of cosine, euclidean"):
        contrastive_loss(views, distance="manhattan")


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**30), n_views=st.integers(2, 3), labelled=st.booleans())
def test_permutation_and_norm_invariance(seed, n_views, labelled):
    def cosine(views, labels):
        return contrastive_loss(views, labels, pos_margin=0.1, neg_margin=1.0)

    def euclidean(views, labels):
        return contrastive_loss(views, labels, neg_margin=3.0, distance="euclidean")

    assert_permutation_invariant(cosine, seed, n_views, labelled)
    assert_permutation_invariant(euclidean, seed, n_views, labelled)
    assert_norm_invariant(cosine, seed, n_views, labelled)


@settings(max_examples=5, deadline=None)
@given(seed=st.integers(0, 2**30), labelled=st.booleans())
def test_loss_falls(seed, labelled):
    assert_loss_falls(build_loss("contrastive", neg_margin=1.0), seed, labelled)
