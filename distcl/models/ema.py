"""Momentum (EMA) targets for MoCo and BYOL: a frozen copy updated from the online network.

The target's parameters are `requires_grad=False`, so they get no gradient, DDP does not sync
them and `distcl.train.optim.param_groups` leaves them out of the optimizer. They are ordinary
submodule parameters, so `state_dict()` saves them and a resumed run restores them.

Momentum schedule (Grill et al. 2020, BYOL section 3.2; Chen et al. 2021, MoCo v3 section 4):
`tau = 1 - (1 - tau_base) * (cos(pi * k / K) + 1) / 2` at step k of K, rising from
`tau_base` at the first step to 1 (or `tau_final`) at the last.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import Tensor, nn


def cosine_momentum(step: int, total_steps: int, base: float, final: float = 1.0) -> float:
    """EMA momentum at optimizer step `step` (0-based) of `total_steps`: base -> final, cosine."""
    if not 0.0 <= base <= final <= 1.0:
        raise ValueError(
            f"method.momentum={base} and method.momentum_final={final} must satisfy "
            "0 <= momentum <= momentum_final <= 1 (BYOL: 0.996 -> 1; solo-learn CIFAR: 0.99 -> 1)"
        )
    progress = min(max(step, 0), total_steps) / max(1, total_steps)
    return final - (final - base) * (math.cos(math.pi * progress) + 1.0) / 2.0


def frozen_copy(module: nn.Module) -> nn.Module:
    """A deep copy of `module` whose parameters never take gradients (the EMA target)."""
    target = copy.deepcopy(module)
    for p in target.parameters():
        p.requires_grad_(False)
    return target


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """`theta_target <- m * theta_target + (1 - m) * theta_online`, parameter by parameter.

    Buffers (BN running statistics) are left alone: the target runs in train mode and normalises
    with batch statistics, as in the BYOL and MoCo reference code.
    """
    t_params, o_params = list(target.parameters()), list(online.parameters())
    if len(t_params) != len(o_params):
        raise ValueError("EMA target and online network differ in structure")
    torch._foreach_lerp_(t_params, [p.detach() for p in o_params], 1.0 - momentum)


class MomentumMethod(nn.Module):
    """Base of MoCo and BYOL: online encoder + projector and their frozen EMA copies.

    Subclasses add their heads and `forward`; this class owns the target and its update.
    momentum, momentum_final: tau at the first and at the last optimizer step.
    """

    def __init__(self, encoder: nn.Module, projector: nn.Module, momentum: float, final: float):
        super().__init__()
        self.encoder = encoder  # the trunk the probes evaluate
        self.projector = projector
        self.target_encoder = frozen_copy(encoder)
        self.target_projector = frozen_copy(projector)
        self.momentum, self.momentum_final = momentum, final
        cosine_momentum(0, 1, momentum, final)  # validates the two settings now

    @torch.no_grad()
    def target(self, x: Tensor) -> Tensor:
        """Target (MoCo: key) projections `B x D` of images `B x C x H x W`, no gradient."""
        return self.target_projector(self.target_encoder(x))

    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        """EMA update of the target with the cosine momentum schedule (called by the loop)."""
        m = cosine_momentum(step, total_steps, self.momentum, self.momentum_final)
        ema_update(self.target_encoder, self.encoder, m)
        ema_update(self.target_projector, self.projector, m)
