"""Multi-class N-pair loss: naive reference, world sizes 1/2/4, and properties."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

from distcl.losses import build_loss, npair_loss

from .multiproc import cases_for
from .properties import assert_loss_falls, invariance_test
from .reference import reference_test, stacked

CASES = cases_for("npair")


def reference(views: list[Tensor], labels: Tensor | None, *, l2_reg: float) -> Tensor:
    """Sohn's log(1 + sum_n exp(s_an - s_ap)) per (anchor, positive), inner products, + L2."""
    f, ids = stacked(views, labels, normalize=False)
    sim = f @ f.T
    total = f.new_zeros(())
    for a in range(len(f)):
        negatives = [k for k in range(len(f)) if ids[k] != ids[a]]
        positives = [k for k in range(len(f)) if k != a and ids[k] == ids[a]]
        per_pos = [torch.log(1 + torch.exp(sim[a, negatives] - sim[a, p]).sum()) for p in positives]
        total = total + sum(per_pos) / len(per_pos)
    reg = sum(f[a] @ f[a] for a in range(len(f))) / len(f)
    return total / len(f) + l2_reg * reg


test_matches_reference_and_single_process = reference_test(CASES, reference)


def test_one_class_batch_has_only_the_regulariser():
    views = [torch.randn(4, 3, dtype=torch.float64) for _ in range(2)]
    labels = torch.zeros(4, dtype=torch.int64)
    reg = torch.cat(views).square().sum(dim=1).mean()
    torch.testing.assert_close(npair_loss(views, labels, l2_reg=0.5), 0.5 * reg)


def test_bad_l2_reg_is_named():
    with pytest.raises(ValueError, match="loss.l2_reg must be >= 0, got -0.1"):
        npair_loss([torch.randn(4, 3), torch.randn(4, 3)], l2_reg=-0.1)


# Not norm-invariant by design: it scores raw inner products.
test_permutation_invariance = invariance_test(
    lambda views, labels: npair_loss(views, labels, l2_reg=0.002), norm=False
)


@settings(max_examples=5, deadline=None)
@given(seed=st.integers(0, 2**30), labelled=st.booleans())
def test_loss_falls(seed, labelled):
    assert_loss_falls(build_loss("npair"), seed, labelled)
