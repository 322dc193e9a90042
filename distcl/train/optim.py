"""Large-batch optimisation: LARS, parameter groups, LR scaling and the per-step schedule.

LARS is You, Gitman & Ginsburg 2017, "Large Batch Training of Convolutional Networks"
(arXiv:1708.03888), with the momentum form of SimCLR's reference implementation
(Chen et al. 2020, google-research/simclr ``lars_optimizer.py``). The LR rules are SimCLR
appendix B.1 (``sqrt``) and Goyal et al. 2017 (``linear``). The schedule is a pure function of the
global step, so a resumed run continues exactly where it stopped.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from distcl.config.names import LR_SCALING

OPTIMIZERS = ("lars", "sgd", "adamw")

# Modules whose affine weights are normalisation scales: no weight decay, no trust ratio.
_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)


class LARS(torch.optim.Optimizer):
    """Layer-wise Adaptive Rate Scaling (You et al. 2017, Algorithm 1), as SimCLR uses it.

    For every parameter tensor ``w`` (one "layer") with gradient ``g``, in a group with
    ``lars_exclude=False``:

        d     = g + weight_decay * w                                   # decayed gradient
        trust = trust_coefficient * ||w|| / (||g|| + weight_decay * ||w|| + eps)
        trust = 1  if ||w|| == 0 or ||g|| == 0                         # fresh zero init / no grad
        v     = momentum * v + lr * trust * d                          # SimCLR's momentum form
        w     = w - v

    ``||.||`` is the L2 norm over the whole tensor. The trust ratio is the paper's "local LR"
    (eq. 6 of arXiv:1708.03888: ``eta * ||w|| / (||grad L(w)|| + beta * ||w||)``). SimCLR's TF code
    divides by ``||g + wd * w||`` instead; by the triangle inequality the two differ by at most
    ``wd * ||w||`` in the denominator, i.e. by a relative 1e-6 x ||w||/||g|| at wd = 1e-6.

    In groups with ``lars_exclude=True`` (biases and normalisation parameters, see
    :func:`param_groups`) there is no trust ratio and no weight decay: ``v = m * v + lr * g``.
    SimCLR excludes exactly these (``exclude_from_weight_decay=['batch_normalization', 'bias']``
    and the same list for adaptation).

    Momentum as in SimCLR: the learning rate (times trust) enters the velocity *before* the
    momentum sum, unlike ``torch.optim.SGD`` which multiplies the velocity by lr afterwards. The two
    agree at constant lr; under warmup/cosine the SimCLR form makes a step's lr affect only that
    step's contribution.

    Args:
        params: parameters or param-group dicts; a group may carry ``lars_exclude`` (default False).
        lr: base learning rate per step (already scaled by the global batch, see :func:`scaled_lr`).
        momentum: velocity decay ``m`` in [0, 1); SimCLR uses 0.9.
        weight_decay: L2 coefficient ``wd`` added to the gradient; SimCLR uses 1e-6 with LARS.
        trust_coefficient: ``eta`` in the trust ratio. 0.001 is the paper's and SimCLR's value: it
            makes each layer's step ~0.1% of its weight norm times lr. A wrong eta silently rescales
            every layer's LR (solo-learn issue #305 reports about four linear-probe points lost
            with the wrong eta), so do not change it without re-tuning lr.
        eps: added to the trust-ratio denominator for numerical safety (1e-8).
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict],
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 1e-6,
        trust_coefficient: float = 0.001,
        eps: float = 1e-8,
    ) -> None:
        if not lr >= 0.0:
            raise ValueError(
                f"optim.lr must be >= 0, got {lr} (SimCLR: 0.3 x B/256 or 0.075 sqrt B)"
            )
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"optim.momentum must be in [0, 1), got {momentum} (try 0.9)")
        if not weight_decay >= 0.0:
            raise ValueError(f"optim.weight_decay must be >= 0, got {weight_decay} (try 1e-6)")
        if not trust_coefficient > 0.0:
            raise ValueError(
                f"optim.trust_coefficient must be > 0, got {trust_coefficient} (try 0.001)"
            )
        if not eps >= 0.0:
            raise ValueError(f"LARS eps must be >= 0, got {eps} (try 1e-8)")
        defaults = {"lr": lr, "momentum": momentum, "weight_decay": weight_decay}
        defaults |= {"trust_coefficient": trust_coefficient, "eps": eps, "lars_exclude": False}
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        """Apply one LARS update to every parameter that has a gradient."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, m = group["lr"], group["momentum"]
            wd, eta, eps = group["weight_decay"], group["trust_coefficient"], group["eps"]
            exclude = group["lars_exclude"]
            for w in group["params"]:
                if w.grad is None:
                    continue
                g = w.grad
                if exclude:
                    d, local_lr = g, lr
                else:
                    d = g.add(w, alpha=wd) if wd != 0 else g
                    w_norm, g_norm = torch.linalg.vector_norm(w), torch.linalg.vector_norm(g)
                    trust = eta * w_norm / (g_norm + wd * w_norm + eps)
                    ok = (w_norm > 0) & (g_norm > 0)
                    local_lr = lr * torch.where(ok, trust, torch.ones_like(trust))
                state = self.state[w]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(w)
                v = state["momentum_buffer"]
                v.mul_(m).add_(d * local_lr)
                w.sub_(v)
        return loss


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Split ``model``'s trainable parameters into a decayed group and an excluded group.

    Excluded (``weight_decay=0``, ``lars_exclude=True``): every bias, every parameter of a
    BatchNorm/LayerNorm/GroupNorm module, and every other 1-D parameter (e.g. a learnable
    temperature or a norm scale in a custom module). This follows SimCLR, which exempts batch-norm
    and bias variables from both weight decay and LARS adaptation. Everything else (conv and linear
    weights) is decayed and LARS-adapted. Empty groups are dropped, so the list has 1 or 2 dicts.
    """
    if weight_decay < 0:
        raise ValueError(f"optim.weight_decay must be >= 0, got {weight_decay} (try 1e-6)")
    excluded_ids: set[int] = set()
    for module in model.modules():
        if isinstance(module, _NORM_TYPES):
            excluded_ids.update(id(p) for p in module.parameters(recurse=False))
    decay, no_decay, seen = [], [], set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        if id(p) in excluded_ids or p.ndim <= 1 or name.endswith("bias"):
            no_decay.append(p)
        else:
            decay.append(p)
    groups = [
        {"params": decay, "weight_decay": weight_decay, "lars_exclude": False},
        {"params": no_decay, "weight_decay": 0.0, "lars_exclude": True},
    ]
    return [g for g in groups if g["params"]]


def scaled_lr(base_lr: float, global_batch: int, rule: str) -> float:
    """Peak learning rate for a global batch of ``global_batch`` samples.

    ``linear``: ``base_lr * B / 256`` (Goyal et al. 2017; SimCLR uses 0.3 x B/256 with LARS).
    ``sqrt``: ``base_lr * sqrt(B)`` (SimCLR appendix B.1: 0.075 x sqrt(B), better for small
    batches and long schedules). ``none``: ``base_lr`` unchanged.
    """
    if global_batch <= 0:
        raise ValueError(f"global batch must be > 0 for LR scaling, got {global_batch}")
    if not base_lr >= 0:
        raise ValueError(f"optim.lr must be >= 0, got {base_lr} (try 0.3 for 'linear')")
    if rule == "linear":
        return base_lr * global_batch / 256.0
    if rule == "sqrt":
        return base_lr * math.sqrt(global_batch)
    if rule == "none":
        return float(base_lr)
    raise ValueError(f"optim.lr_scaling must be one of {LR_SCALING}, got {rule!r}")


def lr_at(
    step: int, *, peak_lr: float, warmup_steps: int, total_steps: int, final_lr: float = 0.0
) -> float:
    """Learning rate at global optimizer step ``step`` (0-based): linear warmup, then cosine.

    Warmup: ``peak_lr * (step + 1) / warmup_steps`` for ``step < warmup_steps`` (so step 0 is not
    a wasted zero-LR step and the last warmup step reaches ``peak_lr``). Then half-cosine from
    ``peak_lr`` to ``final_lr`` over the remaining ``total_steps - warmup_steps`` steps (SimCLR:
    10 warmup epochs, cosine decay without restarts, Loshchilov & Hutter 2017). Steps at or past
    ``total_steps`` return ``final_lr``. A pure function of ``step``: resuming at step k gives the
    same values as an uninterrupted run.
    """
    if total_steps <= 0:
        raise ValueError(f"schedule total_steps must be > 0, got {total_steps} (epochs x steps)")
    if not 0 <= warmup_steps <= total_steps:
        raise ValueError(
            f"schedule warmup_steps must be in [0, total_steps={total_steps}], got {warmup_steps}"
            " (SimCLR warms up for 10 of 100+ epochs)"
        )
    if step < 0:
        raise ValueError(f"schedule step must be >= 0, got {step}")
    if not peak_lr >= 0 or not final_lr >= 0:
        raise ValueError(f"peak_lr and final_lr must be >= 0, got {peak_lr} and {final_lr}")
    if step < warmup_steps:
        return peak_lr * (step + 1) / warmup_steps
    decay_steps = total_steps - warmup_steps
    if step >= total_steps or decay_steps == 0:
        return float(final_lr)
    progress = (step - warmup_steps) / decay_steps  # in [0, 1)
    return final_lr + 0.5 * (peak_lr - final_lr) * (1.0 + math.cos(math.pi * progress))


def build_optimizer(
    name: str,
    params_groups: list[dict],
    lr: float,
    momentum: float = 0.9,
    weight_decay: float = 1e-6,
    trust_coefficient: float = 0.001,
) -> torch.optim.Optimizer:
    """Build ``lars``, ``sgd`` (with momentum) or ``adamw`` over ``params_groups``.

    Per-group ``weight_decay`` from :func:`param_groups` wins over the ``weight_decay`` argument.
    ``lars_exclude`` is read only by LARS; SGD and AdamW carry it as an inert group key. For AdamW,
    ``momentum`` is beta1 (beta2 stays 0.999).
    """
    groups = [dict(g) for g in params_groups]
    if name == "lars":
        return LARS(
            groups,
            lr=lr,
            momentum=momentum,
            weight_decay=weight_decay,
            trust_coefficient=trust_coefficient,
        )
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=(momentum, 0.999), weight_decay=weight_decay)
    raise ValueError(f"optim.name must be one of {OPTIMIZERS}, got {name!r}")


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every param group's ``lr`` (call once per step with :func:`lr_at`)."""
    for group in optimizer.param_groups:
        group["lr"] = lr
