"""Every loss computes in float32 inside a bf16 autocast region (the GPU training path).

The training loop runs the method's forward, loss included, under autocast. On a GPU that made
the similarity matmuls run in bf16; this CPU test catches the same class of bug, because CPU
autocast also runs matmuls in bf16. Before `full_precision`, NT-Xent under autocast differed from
its fp32 value by ~3e-4 relative (loss) and ~4e-3 (gradients); npair and contrastive by more.
"""

from __future__ import annotations

import pytest
import torch

from distcl import losses
from distcl.losses import LOSSES, build_loss

RTOL = 1e-5


def _views(n_views: int = 2, b: int = 24, d: int = 16) -> tuple[list[torch.Tensor], torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    views = [torch.randn(b, d, generator=gen) for _ in range(n_views)]
    return views, torch.randint(0, 5, (b,), generator=gen)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


def _value_and_grads(fn, views, labels, autocast: bool):
    leaves = [v.clone().requires_grad_(True) for v in views]
    if autocast:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = fn(leaves, labels)
    else:
        loss = fn(leaves, labels)
    loss.backward()  # outside the region, as the training loop does
    return loss.detach(), [v.grad for v in leaves]


@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("n_views", [2, 3])
def test_registry_loss_is_fp32_under_bf16_autocast(name, n_views):
    views, labels = _views(n_views)
    labels = labels if LOSSES[name].needs_labels else None
    loss_fn = build_loss(name)
    ref, ref_grads = _value_and_grads(loss_fn, views, labels, autocast=False)
    got, grads = _value_and_grads(loss_fn, views, labels, autocast=True)
    assert got.dtype == torch.float32
    assert _rel(got, ref) <= RTOL, (name, _rel(got, ref))
    for g, r in zip(grads, ref_grads, strict=True):
        assert _rel(g, r) <= RTOL, (name, _rel(g, r))
    for p in loss_fn.parameters():  # SigLIP's temperature and bias
        assert p.grad is not None


@pytest.mark.parametrize(
    "fn",
    [
        losses.info_nce_loss,
        losses.ntxent_loss,
        losses.supcon_loss,
        losses.contrastive_loss,
        losses.triplet_loss,
        losses.npair_loss,
        lambda v, y: losses.sigmoid_pairwise_loss(v, y, log_temperature=2.3, bias=-10.0),
    ],
    ids=["info_nce", "ntxent", "supcon", "contrastive", "triplet", "npair", "sigmoid"],
)
def test_public_loss_function_is_fp32_under_bf16_autocast(fn):
    views, labels = _views()
    ref, ref_grads = _value_and_grads(fn, views, labels, autocast=False)
    got, grads = _value_and_grads(fn, views, labels, autocast=True)
    assert _rel(got, ref) <= RTOL
    for g, r in zip(grads, ref_grads, strict=True):
        assert _rel(g, r) <= RTOL


def test_bf16_embeddings_are_upcast_and_fp64_stays_fp64():
    views, _ = _views()
    loss_fn = build_loss("ntxent")
    half = loss_fn([v.bfloat16() for v in views])
    assert half.dtype == torch.float32
    assert loss_fn([v.double() for v in views]).dtype == torch.float64
