"""Triplet loss (batch-all, batch-hard, semi-hard): naive reference, world sizes 1/2/4, properties."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

from distcl.losses import build_loss, triplet_loss

from .multiproc import cases_for
from .properties import assert_loss_falls, assert_norm_invariant, assert_permutation_invariant
from .reference import pair_distance, reference_test, stacked

CASES = cases_for("triplet")
MININGS = ["batch_all", "batch_hard", "semi_hard"]


def reference(
    views: list[Tensor],
    labels: Tensor | None,
    *,
    margin: float = 0.2,
    distance: str = "cosine",
    mining: str = "batch_hard",
) -> Tensor:
    """Full distance matrix entry by entry, then every anchor's triplets enumerated in Python."""
    z, ids = stacked(views, labels, normalize=distance == "cosine")
    k_all = range(len(z))
    d = [[pair_distance(z, a, k, distance) for k in k_all] for a in k_all]
    total = z.new_zeros(())
    for a in k_all:
        pos = [k for k in k_all if k != a and ids[k] == ids[a]]
        neg = [k for k in k_all if ids[k] != ids[a]]
        if not neg:
            continue
        if mining == "batch_all":
            hinge = [torch.relu(d[a][p] - d[a][q] + margin) for p in pos for q in neg]
            total = total + sum(hinge) / len(hinge)
        elif mining == "batch_hard":
            hardest_pos = max((d[a][p] for p in pos), key=lambda t: float(t.detach()))
            hardest_neg = min((d[a][q] for q in neg), key=lambda t: float(t.detach()))
            total = total + torch.relu(hardest_pos - hardest_neg + margin)
        else:
            per_pos = []
            for p in pos:
                farther = [d[a][q] for q in neg if d[a][q] > d[a][p]]
                chosen = (
                    min(farther, key=lambda t: float(t.detach()))
                    if farther
                    else max((d[a][q] for q in neg), key=lambda t: float(t.detach()))
                )
                per_pos.append(torch.relu(d[a][p] - chosen + margin))
            total = total + sum(per_pos) / len(per_pos)
    return total / len(z)


test_matches_reference_and_single_process = reference_test(CASES, reference)


@pytest.mark.parametrize("mining", MININGS)
@pytest.mark.parametrize("labelled", [False, True])
def test_larger_batch_matches_reference(mining, labelled):
    # 3 views of 10 images and many ties in class: exercises the sort/prefix-sum mining paths
    # (several positives per anchor, negatives on both sides of every threshold).
    gen = torch.Generator().manual_seed(7)
    views = [torch.randn(10, 4, generator=gen, dtype=torch.float64) for _ in range(3)]
    labels = torch.randint(0, 3, (10,), generator=gen) if labelled else None
    leaves = [v.clone().requires_grad_(True) for v in views]
    got = triplet_loss(leaves, labels, margin=0.4, mining=mining, chunk_size=7)
    got_grads = torch.autograd.grad(got, leaves)
    ref_leaves = [v.clone().requires_grad_(True) for v in views]
    want = reference(ref_leaves, labels, margin=0.4, mining=mining)
    want_grads = torch.autograd.grad(want, ref_leaves)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=0)
    for g, w in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-12)


def test_semi_hard_falls_back_to_farthest_negative():
    # Anchor (1, 0): positive at 90 degrees, negative at 45 degrees (closer than the positive),
    # so no semi-hard negative exists and the farthest negative is used: (1 - 0) - (1 - c) + m.
    c = 2**-0.5
    a = torch.tensor([[1.0, 0.0], [c, c]], dtype=torch.float64)
    b = torch.tensor([[0.0, 1.0], [c, c]], dtype=torch.float64)
    loss = triplet_loss([a, b], torch.tensor([0, 1]), margin=0.1, mining="semi_hard")
    # Rows: a0 (pos b0, neg a1, b1 both at 1 - c): 1 - (1 - c) + 0.1; b0 (pos a0 at 1, negs at
    # 1 - c): same; a1, b1 (pos at distance 0, negs at 1 - c > 0): max(0, 0 - (1 - c) + 0.1).
    want = (2 * (c + 0.1) + 2 * max(0.0, c - 1 + 0.1)) / 4
    assert loss.item() == pytest.approx(want, rel=1e-12)


def test_bad_mining_is_named():
    with pytest.raises(ValueError, match="loss.mining must be one of batch_all, batch_hard"):
        triplet_loss([torch.randn(4, 3), torch.randn(4, 3)], mining="hardest")


@settings(max_examples=20, deadline=None)
@given(
    seed=st.integers(0, 2**30),
    n_views=st.integers(2, 3),
    labelled=st.booleans(),
    mining=st.sampled_from(MININGS),
)
def test_permutation_and_norm_invariance(seed, n_views, labelled, mining):
    def cosine(views, labels):
        return triplet_loss(views, labels, margin=0.3, mining=mining, chunk_size=5)

    def euclidean(views, labels):
        return triplet_loss(views, labels, margin=1.0, distance="euclidean", mining=mining)

    assert_permutation_invariant(cosine, seed, n_views, labelled)
    assert_permutation_invariant(euclidean, seed, n_views, labelled)
    assert_norm_invariant(cosine, seed, n_views, labelled)


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 2**30), labelled=st.booleans(), mining=st.sampled_from(MININGS))
def test_loss_falls(seed, labelled, mining):
    assert_loss_falls(build_loss("triplet", margin=0.5, mining=mining), seed, labelled)
