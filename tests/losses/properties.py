"""Property checks shared by the loss tests (driven by hypothesis in each test file)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

LossFn = Callable[[Sequence[Tensor], Tensor | None], Tensor]


def random_batch(
    seed: int, *, n: int = 12, dim: int = 5, n_views: int = 2, labelled: bool = False
) -> tuple[list[Tensor], Tensor | None]:
    """V float64 views ``n x dim`` and labels from 3 classes (or None)."""
    gen = torch.Generator().manual_seed(seed)
    views = [torch.randn(n, dim, generator=gen, dtype=torch.float64) for _ in range(n_views)]
    labels = torch.randint(0, 3, (n,), generator=gen) if labelled else None
    if labels is not None:
        labels[:2] = torch.tensor([0, 1])
    return views, labels


def assert_permutation_invariant(loss_fn: LossFn, seed: int, n_views: int, labelled: bool) -> None:
    """Reordering the images (the same way in every view, labels too) leaves the loss unchanged."""
    views, labels = random_batch(seed, n_views=n_views, labelled=labelled)
    perm = torch.randperm(views[0].shape[0], generator=torch.Generator().manual_seed(seed + 1))
    base = loss_fn(views, labels)
    permuted = loss_fn([v[perm] for v in views], None if labels is None else labels[perm])
    torch.testing.assert_close(permuted, base, rtol=1e-10, atol=1e-12)


def assert_norm_invariant(loss_fn: LossFn, seed: int, n_views: int, labelled: bool) -> None:
    """Rescaling each embedding by a positive factor leaves a cosine-based loss unchanged."""
    views, labels = random_batch(seed, n_views=n_views, labelled=labelled)
    gen = torch.Generator().manual_seed(seed + 2)
    scaled = [
        v * torch.empty(v.shape[0], 1, dtype=v.dtype).uniform_(0.05, 20, generator=gen)
        for v in views
    ]
    torch.testing.assert_close(
        loss_fn(scaled, labels), loss_fn(views, labels), rtol=1e-10, atol=1e-12
    )


def assert_loss_falls(
    module: nn.Module, seed: int, labelled: bool, *, steps: int = 15, lr: float = 0.05
) -> None:
    """A few Adam steps on free random embeddings (and the loss's own parameters) lower the loss."""
    views, labels = random_batch(seed, n=16, dim=8, labelled=labelled)
    leaves = [nn.Parameter(v) for v in views]
    module = module.double()
    opt = torch.optim.Adam([*leaves, *module.parameters()], lr=lr)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = module(leaves, labels)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0], f"loss did not fall: {losses}"


def invariance_test(loss_fn: LossFn, *, norm: bool) -> Callable[..., None]:
    """A hypothesis test over random batches of 2-3 views, with and without labels: the loss is
    unchanged when the batch is permuted and, where `norm`, when embeddings are rescaled."""

    @settings(max_examples=20, deadline=None)
    @given(seed=st.integers(0, 2**30), n_views=st.integers(2, 3), labelled=st.booleans())
    def test(seed: int, n_views: int, labelled: bool) -> None:
        assert_permutation_invariant(loss_fn, seed, n_views, labelled)
        if norm:
            assert_norm_invariant(loss_fn, seed, n_views, labelled)

    return test
