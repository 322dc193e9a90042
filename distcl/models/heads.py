"""Projection heads: the MLP between encoder features and the loss."""

from __future__ import annotations

from torch import nn


def projection_mlp(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    """Linear-BN-ReLU-Linear (SimCLR's 2-layer head): `B x in_dim -> B x out_dim`.

    The loss sees the head's output; the probes use the encoder features before it, which
    transfer better (Chen et al. 2020, section 4.2).
    """
    return nn.Sequential(
        nn.Linear(in_dim, hidden, bias=False),
        nn.BatchNorm1d(hidden),
        nn.ReLU(inplace=True),
        nn.Linear(hidden, out_dim),
    )
