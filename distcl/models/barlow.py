"""Barlow Twins (Zbontar et al. 2021, "Self-Supervised Learning via Redundancy Reduction", ICML).

The cross-correlation matrix `C` (`D x D`) between the two views' batch-standardised
embeddings is pushed towards the identity:
`L = sum_i (1 - C_ii)^2 + lambda * sum_{i != j} C_ij^2` (eq. 1), lambda = 0.0051.

`C` is taken over the GLOBAL batch, as the reference code does with its all-reduced matrix
and synchronised BN: the per-feature mean and variance and the matrix itself are sums over
ranks through `dist.all_reduce_with_grad`, whose backward sums the gradient over ranks. Every
rank then computes the same global loss, and its gradient for its own rows is `W` times the
single-process one; DDP's averaging over `W` ranks gives exactly the single-process gradient.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from distcl.models.base import Method
from distcl.models.fp32 import fp32
from distcl.models.heads import mlp
from distcl.models.moco import check_two_views
from distcl.runtime import dist

BN_EPS = 1e-5  # the reference's BatchNorm1d(affine=False) epsilon


def _standardize(z: Tensor, n: Tensor) -> Tensor:
    """`(z - mean) / sqrt(var + eps)` with the global batch's biased statistics: `B x D`."""
    mean = dist.all_reduce_with_grad(z.sum(dim=0)) / n  # D
    var = dist.all_reduce_with_grad(((z - mean) ** 2).sum(dim=0)) / n  # D
    return (z - mean) / torch.sqrt(var + BN_EPS)


def barlow_twins_loss(z1: Tensor, z2: Tensor, *, lambd: float = 0.0051) -> Tensor:
    """Barlow Twins loss of this rank's rows `z1`, `z2` (`B_local x D`) over the global batch.

    Returns the global loss (the same value on every rank; see the module docstring for the
    gradient convention).
    """
    if not lambd >= 0:
        raise ValueError(f"method.barlow_lambda must be >= 0, got {lambd} (paper: 0.0051)")
    n = dist.all_reduce_sum(torch.tensor(float(len(z1)), dtype=z1.dtype, device=z1.device))
    a, b = _standardize(z1, n), _standardize(z2, n)  # B_local x D each
    c = dist.all_reduce_with_grad(a.T @ b) / n  # D x D
    diag = torch.diagonal(c)
    on_diag = (1 - diag).pow(2).sum()
    off_diag = c.pow(2).sum() - diag.pow(2).sum()
    return on_diag + lambd * off_diag


class BarlowTwins(Method):
    """Encoder + 3-layer projector (BN on hidden layers; the output BN is the loss's global
    standardisation). hidden, dim: projector widths (paper: 8192, 8192; solo-learn CIFAR 2048).
    lambd: off-diagonal weight. scale_loss: loss multiplier (solo-learn CIFAR: 0.1).
    """

    def __init__(
        self, encoder: nn.Module, *, hidden: int, dim: int, lambd: float, scale_loss: float
    ):
        super().__init__()
        if not scale_loss > 0:
            raise ValueError(f"method.barlow_scale_loss must be > 0, got {scale_loss} (try 1.0)")
        self.encoder = encoder  # the trunk the probes evaluate
        self.projector = mlp(encoder.feat_dim, hidden, dim, layers=3)
        self.lambd, self.scale_loss = lambd, scale_loss

    def forward(self, views: list[Tensor], labels: Tensor) -> Tensor:
        check_two_views("barlow", views)
        z1, z2 = self.projector(self.encoder(torch.cat(views))).float().chunk(2)  # B x D each
        with fp32(z1):
            return self.scale_loss * barlow_twins_loss(z1, z2, lambd=self.lambd)
