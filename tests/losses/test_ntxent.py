"""NT-Xent / SupCon: naive reference, world sizes 1/2/4, and properties."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

from distcl.losses import build_loss, info_nce_loss, supcon_loss

from .multiproc import cases_for
from .properties import (
    assert_loss_falls,
    invariance_test,
)
from .reference import reference_test, stacked

CASES = cases_for("ntxent") + cases_for("supcon")


def reference(views: list[Tensor], labels: Tensor | None, *, temperature: float) -> Tensor:
    """Full (V*N) x (V*N) similarity matrix; for each anchor, -log softmax averaged over its
    positives (Khosla et al. 2020 L_out; SimCLR when ids are images)."""
    z, ids = stacked(views, labels, normalize=True)
    sim = z @ z.T / temperature
    total = z.new_zeros(())
    for a in range(len(z)):
        others = [k for k in range(len(z)) if k != a]
        log_den = torch.logsumexp(sim[a, others], dim=0)
        positives = [k for k in others if ids[k] == ids[a]]
        total = total + sum(log_den - sim[a, p] for p in positives) / len(positives)
    return total / len(z)


test_matches_reference_and_single_process = reference_test(CASES, reference)


def test_two_views_is_simclr_cross_entropy():
    # SimCLR's form: cross-entropy over the 2N-1 other rows with the other view as the target.
    gen = torch.Generator().manual_seed(0)
    a, b = (torch.randn(10, 4, generator=gen, dtype=torch.float64) for _ in range(2))
    z = F.normalize(torch.cat([a, b]), dim=1)
    logits = (z @ z.T / 0.1).fill_diagonal_(float("-inf"))
    targets = torch.cat([torch.arange(10, 20), torch.arange(10)])
    want = F.cross_entropy(logits, targets)
    torch.testing.assert_close(info_nce_loss([a, b], temperature=0.1), want, rtol=1e-12, atol=0)


def test_supcon_without_labels_names_the_fix():
    views = [torch.randn(4, 3), torch.randn(4, 3)]
    with pytest.raises(ValueError, match="supcon needs class labels.*ntxent"):
        supcon_loss(views, None)


@pytest.mark.parametrize("bad", [0.0, -0.1])
def test_bad_temperature_is_named(bad):
    with pytest.raises(ValueError, match=rf"loss.temperature must be > 0, got {bad}"):
        info_nce_loss([torch.randn(4, 3), torch.randn(4, 3)], temperature=bad)


def test_one_view_is_rejected():
    with pytest.raises(ValueError, match=">= 2 views"):
        info_nce_loss([torch.randn(4, 3)])


def test_float32_large_batch_is_finite_at_low_temperature():
    gen = torch.Generator().manual_seed(1)
    views = [torch.randn(256, 16, generator=gen, requires_grad=True) for _ in range(2)]
    loss = info_nce_loss(views, temperature=0.01)
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(v.grad).all() for v in views)


test_permutation_and_norm_invariance = invariance_test(
    lambda views, labels: info_nce_loss(views, labels, temperature=0.3), norm=True
)


@settings(max_examples=5, deadline=None)
@given(seed=st.integers(0, 2**30), name=st.sampled_from(["ntxent", "supcon"]))
def test_loss_falls(seed, name):
    assert_loss_falls(build_loss(name, temperature=0.2), seed, labelled=name == "supcon")
