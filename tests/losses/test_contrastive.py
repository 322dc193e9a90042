"""Margin contrastive loss: naive reference, world sizes 1/2/4, and properties."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

from distcl.losses import build_loss, contrastive_loss

from .multiproc import cases_for, check_reference, check_world, reference_run, run_case
from .properties import assert_loss_falls, assert_norm_invariant, assert_permutation_invariant

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
    n_views, n = len(views), views[0].shape[0]
    z = torch.cat(views)
    if distance == "cosine":
        z = F.normalize(z, dim=1)
    ids = (torch.arange(n) if labels is None else labels).repeat(n_views)
    total = z.new_zeros(())
    for a in range(len(z)):
        pos_terms, neg_terms = [], []
        for k in range(len(z)):
            if k == a:
                continue
            d = 1 - z[a] @ z[k] if distance == "cosine" else (z[a] - z[k]).norm()
            if ids[k] == ids[a]:
                pos_terms.append(0.5 * torch.relu(d - pos_margin) ** 2)
            else:
                neg_terms.append(0.5 * torch.relu(neg_margin - d) ** 2)
        total = total + sum(pos_terms) / len(pos_terms)
        if neg_terms:
            total = total + sum(neg_terms) / len(neg_terms)
    return total / len(z)


@pytest.mark.parametrize("world", [1, 2, 4])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.case_id)
def test_matches_reference_and_single_process(case, world):
    single = run_case(case)
    check_reference(case, single, reference_run(case, reference))
    if world > 1:
        check_world(case, world, single)


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
