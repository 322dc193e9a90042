"""The method interface: everything the training loop calls on a method, and nothing more.

A method is an `nn.Module` whose `forward(views, labels)` returns the scalar training loss, so
the loop, DDP and gradient caching treat every method alike. Each step the loop calls, in this
order and on every method: `forward` (through DDP), the backward, `before_optimizer_step(epoch)`,
`optimizer.step()`, `after_optimizer_step(step, total_steps)`. The two step calls do nothing
unless a method needs them: SwAV freezes and renormalises its prototypes, MoCo and BYOL move
their EMA targets. Every method subclasses `Method` directly (inheritance one level deep).
"""

from __future__ import annotations

from torch import Tensor, nn


class Method(nn.Module):
    """Base of every method. `encoder` is the trunk the kNN monitor and the probes evaluate
    (`B x C x H x W` images -> `B x encoder.feat_dim` features)."""

    encoder: nn.Module

    def forward(self, views: list[Tensor], labels: Tensor) -> Tensor:
        """The scalar loss of V views (each `B_local x C x H x W`) and `B_local` class labels
        (used by the label methods only)."""
        raise NotImplementedError(f"{type(self).__name__} must define forward(views, labels)")

    def before_optimizer_step(self, epoch: int) -> None:
        """After the backward of a step of epoch `epoch` (0-based), before `optimizer.step()`:
        e.g. drop the gradients of parameters frozen in this epoch. Default: nothing."""

    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        """After `optimizer.step()` of global step `step` (0-based) of `total_steps`: update
        what gradients do not train (EMA targets, prototype norms). Default: nothing."""
