"""Pairwise sigmoid (SigLIP) loss: naive reference, world sizes 1/2/4, and properties."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

from distcl.losses import LogisticLoss, build_loss, sigmoid_pairwise_loss

from .multiproc import cases_for, reference_run
from .properties import (
    assert_loss_falls,
    invariance_test,
)
from .reference import check_case, stacked

CASES = cases_for("logistic")


def reference(
    views: list[Tensor],
    labels: Tensor | None,
    *,
    log_temperature: Tensor,
    bias: Tensor,
    **init: float,
) -> Tensor:
    """-log sigmoid(y * (t <z_a, z_k> + b)) over every ordered pair a != k, mean over anchors."""
    z, ids = stacked(views, labels, normalize=True)
    t = log_temperature.exp()
    total = z.new_zeros(())
    for a in range(len(z)):
        for k in range(len(z)):
            if k != a:
                y = 1.0 if ids[k] == ids[a] else -1.0
                total = total - F.logsigmoid(y * (t * (z[a] @ z[k]) + bias))
    return total / len(z)


def _leaves(case) -> dict[str, Tensor]:
    """The same t', b values the library module starts from, as fp64 leaves."""
    module = build_loss("logistic", **case.params).double()
    return {n: p.detach().clone().requires_grad_(True) for n, p in module.named_parameters()}


@pytest.mark.parametrize("world", [1, 2, 4])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.case_id)
def test_matches_reference_and_single_process(case, world):
    ref = reference_run(case, reference, **_leaves(case))
    assert set(ref["param_grads"]) == {"log_temperature", "bias"}
    check_case(case, world, ref)


def test_parameters_start_at_the_siglip_init_and_train():
    loss = LogisticLoss()
    assert loss.log_temperature.item() == pytest.approx(math.log(10.0))
    assert loss.bias.item() == pytest.approx(-10.0)
    assert {n for n, p in loss.named_parameters() if p.requires_grad} == {"log_temperature", "bias"}


def test_large_logits_are_exact():
    # Saturated pairs (|x| >> 20) must not be cut off by a softplus threshold.
    views = [torch.eye(3, dtype=torch.float64), torch.eye(3, dtype=torch.float64)]
    got = sigmoid_pairwise_loss(views, log_temperature=math.log(50.0), bias=-30.0)
    # Per anchor: 1 positive at x = 20, 4 negatives at x = -30.
    want = F.softplus(torch.tensor(-20.0, dtype=torch.float64)) + 4 * F.softplus(
        torch.tensor(-30.0, dtype=torch.float64)
    )
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)


def test_bad_temperature_init_is_named():
    with pytest.raises(ValueError, match="loss.sigmoid_t_init must be > 0, got 0"):
        build_loss("logistic", sigmoid_t_init=0)


test_permutation_and_norm_invariance = invariance_test(
    lambda views, labels: sigmoid_pairwise_loss(
        views, labels, log_temperature=math.log(10.0), bias=-5.0
    ),
    norm=True,
)


@settings(max_examples=5, deadline=None)
@given(seed=st.integers(0, 2**30), labelled=st.booleans())
def test_loss_falls(seed, labelled):
    assert_loss_falls(build_loss("logistic"), seed, labelled)
