"""Momentum (EMA) targets for MoCo and BYOL: a frozen copy updated from the online network.

A method calls `add_targets` in `__init__`: it sets the online `encoder` and `projector`, their
`frozen_copies` `target_encoder` and `target_projector`, and the schedule `momentum` (a
`Momentum`) as its own attributes, so the state-dict keys are the method's. `target_forward`
runs the target without gradient, and `follow_online` (the method's `after_optimizer_step`)
calls `ema_update` with the momentum of the step.

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
from collections.abc import Sequence
from dataclasses import dataclass

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


def frozen_copies(*modules: nn.Module) -> tuple[nn.Module, ...]:
    """Deep copies of `modules` whose parameters never take gradients (the EMA targets)."""
    targets = tuple(copy.deepcopy(m) for m in modules)
    for target in targets:
        target.requires_grad_(False)
    return targets


@dataclass(frozen=True)
class Momentum:
    """A method's EMA momentum: tau is `base` at the first optimizer step, `final` at the last."""

    base: float  # method.momentum (BYOL: 0.996, MoCo v3: 0.99)
    final: float  # method.momentum_final (1.0 in both papers)

    def __post_init__(self) -> None:
        cosine_momentum(0, 1, self.base, self.final)  # validates the two settings now

    def at(self, step: int, total_steps: int) -> float:
        return cosine_momentum(step, total_steps, self.base, self.final)


@torch.no_grad()
def ema_update(targets: Sequence[nn.Module], onlines: Sequence[nn.Module], momentum: float) -> None:
    """`theta_target <- m * theta_target + (1 - m) * theta_online` for each pair of modules,
    parameter by parameter.

    Buffers (BN running statistics) are left alone: the target runs in train mode and normalises
    with batch statistics, as in the BYOL and MoCo reference code.
    """
    t_params = [p for t in targets for p in t.parameters()]
    o_params = [p for o in onlines for p in o.parameters()]
    if len(t_params) != len(o_params):
        raise ValueError("EMA target and online network differ in structure")
    torch._foreach_lerp_(t_params, [p.detach() for p in o_params], 1.0 - momentum)


def add_targets(
    method: nn.Module, encoder: nn.Module, projector: nn.Module, momentum: Momentum
) -> None:
    """Give the method its online `encoder` and `projector`, their frozen EMA copies
    `target_encoder` and `target_projector`, and its `momentum` (what MoCo v2/v3 and BYOL share)."""
    method.encoder, method.projector = encoder, projector
    method.target_encoder, method.target_projector = frozen_copies(encoder, projector)
    method.momentum = momentum


@torch.no_grad()
def target_forward(method: nn.Module, x: Tensor) -> Tensor:
    """The target projections (`B x D`, no gradient) of images `x` (`B x C x H x W`)."""
    return method.target_projector(method.target_encoder(x))


def follow_online(method: nn.Module, step: int, total_steps: int) -> None:
    """EMA update of the target encoder and projector toward the online ones, with the momentum
    of optimizer step `step` of `total_steps`."""
    targets = (method.target_encoder, method.target_projector)
    ema_update(targets, (method.encoder, method.projector), method.momentum.at(step, total_steps))
