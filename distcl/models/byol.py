"""BYOL (Grill et al. 2020, "Bootstrap Your Own Latent", NeurIPS): an online network with a
predictor regresses the projection of a slow EMA target network; no negatives.

Loss (section 3.1, eq. 2): for each ordered pair of the two views,
`2 - 2 <p_online(v), z_target(v')> / (|p| |z|)`, summed over both directions (`L + L~`), mean
over the batch. The asymmetric augmentations (blur always on view 1, solarisation on view 2)
come from the loader's `byol` view preset; the loss itself is symmetric. The target momentum
rises from `method.momentum` (paper: 0.996) to 1 with a cosine schedule (section 3.2).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distcl.models.base import Method
from distcl.models.ema import Momentum, add_targets, follow_online, target_forward
from distcl.models.fp32 import fp32
from distcl.models.heads import mlp
from distcl.models.moco import check_two_views


def regression_loss(p: Tensor, z: Tensor) -> Tensor:
    """BYOL's normalised MSE, `2 - 2 cos(p, z)`, mean over rows: `p`, `z` are `B x D`."""
    return (2 - 2 * F.cosine_similarity(p, z.detach(), dim=1)).mean()


class BYOL(Method):
    """Online encoder + projector + predictor; target encoder + projector as frozen EMA copies.

    hidden, dim: projector (and predictor output) widths (paper: 4096 -> 256).
    predictor_hidden: predictor hidden width (paper: 4096). momentum: tau_base and the value it
    reaches at the last step.
    """

    def __init__(
        self,
        encoder: nn.Module,
        *,
        hidden: int,
        dim: int,
        predictor_hidden: int,
        momentum: Momentum,
    ):
        super().__init__()
        # online trunk (the probes evaluate it) + projector, and their EMA targets (ema.py)
        add_targets(self, encoder, mlp(encoder.feat_dim, hidden, dim), momentum)
        self.predictor = mlp(dim, predictor_hidden, dim)

    def forward(self, views: list[Tensor], labels: Tensor) -> Tensor:
        check_two_views("byol", views)
        x = torch.cat(views)  # 2B x C x H x W, one forward for both views
        p1, p2 = self.predictor(self.projector(self.encoder(x))).float().chunk(2)  # B x D
        z1, z2 = target_forward(self, x).float().chunk(2)  # B x D, no gradient
        with fp32(p1):
            return regression_loss(p1, z2) + regression_loss(p2, z1)

    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        """The target follows the online network with the cosine momentum (section 3.2)."""
        follow_online(self, step, total_steps)
