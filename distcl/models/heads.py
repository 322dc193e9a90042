"""Projection and prediction heads: the MLPs between encoder features and a method's loss.

Each method's paper fixes the head's depth and where batch norm goes; `mlp` builds all of them:

| method       | head                                  | layers | BN                           |
| ------------ | ------------------------------------- | ------ | ---------------------------- |
| SimCLR       | projector (Chen et al. 2020, 4.2)     | 2      | hidden                       |
| MoCo v2      | projector (Chen et al. 2020b)         | 2      | none                         |
| MoCo v3      | projector / predictor (Chen 2021)     | 2 / 2  | all / hidden (ResNet code)   |
| BYOL         | projector / predictor (Grill 2020, 3) | 2 / 2  | hidden                       |
| SwAV         | projector (Caron et al. 2020)         | 2      | hidden                       |
| Barlow Twins | projector (Zbontar et al. 2021, 4)    | 3      | hidden (output BN in loss)   |
"""

from __future__ import annotations

from torch import nn


def mlp(
    in_dim: int,
    hidden: int,
    out_dim: int,
    *,
    layers: int = 2,
    hidden_bn: bool = True,
    last_bn: bool = False,
) -> nn.Sequential:
    """`layers` Linear layers with ReLU between them: `B x in_dim -> B x out_dim`.

    hidden_bn: BatchNorm1d after every hidden Linear (its bias is then redundant and dropped).
    last_bn: BatchNorm1d without affine parameters after the last Linear (MoCo v3's heads).
    """
    if layers < 1:
        raise ValueError(f"an MLP head needs >= 1 layer, got layers={layers}")
    mods: list[nn.Module] = []
    dim = in_dim
    for _ in range(layers - 1):
        mods.append(nn.Linear(dim, hidden, bias=not hidden_bn))
        if hidden_bn:
            mods.append(nn.BatchNorm1d(hidden))
        mods.append(nn.ReLU(inplace=True))
        dim = hidden
    mods.append(nn.Linear(dim, out_dim, bias=not last_bn))
    if last_bn:
        mods.append(nn.BatchNorm1d(out_dim, affine=False))
    return nn.Sequential(*mods)


def projection_mlp(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    """Linear-BN-ReLU-Linear (SimCLR's 2-layer head): `B x in_dim -> B x out_dim`.

    The loss sees the head's output; the probes use the encoder features before it, which
    transfer better (Chen et al. 2020, section 4.2).
    """
    return mlp(in_dim, hidden, out_dim, layers=2)
