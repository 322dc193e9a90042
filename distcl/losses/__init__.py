"""Loss registry: ``loss.name`` -> a module with ``forward(views, labels=None) -> scalar``.

Every loss takes ``views`` (V >= 2 tensors, each ``B_local x D``, the same images in the same
row order) and ``labels`` (``B_local`` int64 or None). Positives share an id: the class label
when labels are given, else the image's global index. Each rank scores its local rows against
the gathered global rows and returns the mean over its local anchors, so DDP's gradient
averaging reproduces the single-process gradients (see ``batch.py``).

    loss = build_loss(cfg.loss.name, **asdict(cfg.loss))  # unknown / irrelevant keys ignored
    value = loss(views, labels if needs_labels(cfg.loss.name) else None)
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from distcl.losses.contrastive import contrastive_loss
from distcl.losses.logistic import LogisticLoss, sigmoid_pairwise_loss
from distcl.losses.npair import npair_loss
from distcl.losses.ntxent import info_nce_loss, ntxent_loss, supcon_loss
from distcl.losses.triplet import triplet_loss

__all__ = [
    "LOSSES",
    "LossSpec",
    "FunctionalLoss",
    "LogisticLoss",
    "build_loss",
    "needs_labels",
    "contrastive_loss",
    "info_nce_loss",
    "npair_loss",
    "ntxent_loss",
    "sigmoid_pairwise_loss",
    "supcon_loss",
    "triplet_loss",
]


class FunctionalLoss(nn.Module):
    """Stateless wrapper: ``forward(views, labels)`` calls ``fn(views, labels, **params)``."""

    def __init__(self, fn: Callable[..., Tensor], **params: Any) -> None:
        super().__init__()
        self.fn = fn
        self.params = params

    def forward(self, views: Sequence[Tensor], labels: Tensor | None = None) -> Tensor:
        """``views``: V tensors ``B_local x D``; ``labels``: ``B_local`` or None -> scalar."""
        return self.fn(views, labels, **self.params)

    def extra_repr(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{self.fn.__name__}({args})"


def _functional(fn: Callable[..., Tensor]) -> Callable[..., nn.Module]:
    """Factory for a stateless loss whose keyword-only arguments are its parameters."""

    def factory(**params: Any) -> nn.Module:
        return FunctionalLoss(fn, **params)

    factory.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [p for p in inspect.signature(fn).parameters.values() if p.kind == p.KEYWORD_ONLY]
    )
    return factory


@dataclass(frozen=True)
class LossSpec:
    """One registry entry."""

    name: str  # the value of loss.name
    needs_labels: bool  # True: a label-free run cannot use it
    summary: str  # one line, for `distcl train --help` and docs
    factory: Callable[..., nn.Module]  # keyword params -> module; see params()

    def params(self) -> tuple[str, ...]:
        """The keyword parameters the factory accepts (others are ignored by build_loss)."""
        return tuple(inspect.signature(self.factory).parameters)


LOSSES: dict[str, LossSpec] = {
    spec.name: spec
    for spec in (
        LossSpec(
            "ntxent",
            False,
            "NT-Xent/InfoNCE over V views, other views are positives (Chen et al. 2020)",
            _functional(ntxent_loss),
        ),
        LossSpec(
            "supcon",
            True,
            "supervised contrastive: NT-Xent where same-class rows are positives (Khosla 2020)",
            _functional(supcon_loss),
        ),
        LossSpec(
            "contrastive",
            False,
            "margin contrastive loss, pos/neg margins on cosine or Euclidean distance (Hadsell 2006)",
            _functional(contrastive_loss),
        ),
        LossSpec(
            "triplet",
            False,
            "triplet margin loss with batch_all/batch_hard/semi_hard global mining (Schroff 2015)",
            _functional(triplet_loss),
        ),
        LossSpec(
            "npair",
            False,
            "multi-class N-pair loss with an L2 penalty on embeddings (Sohn 2016)",
            _functional(npair_loss),
        ),
        LossSpec(
            "logistic",
            False,
            "pairwise sigmoid loss with learnable temperature and bias (SigLIP, Zhai 2023)",
            LogisticLoss,
        ),
    )
}


def _spec(name: str) -> LossSpec:
    if name not in LOSSES:
        raise ValueError(f"loss.name must be one of {', '.join(LOSSES)}, got {name!r}")
    return LOSSES[name]


def needs_labels(name: str) -> bool:
    """Whether loss ``name`` needs class labels (ValueError for an unknown name)."""
    return _spec(name).needs_labels


def build_loss(name: str, /, **params: Any) -> nn.Module:
    """Build loss ``name``; params it does not take are ignored, so a whole config can be passed.

    Keyword names and defaults: ``temperature=0.2`` (ntxent, supcon), ``margin=0.2`` (triplet),
    ``pos_margin=0.0``, ``neg_margin=0.5`` (contrastive), ``distance="cosine"`` (contrastive,
    triplet), ``mining="batch_hard"`` (triplet), ``l2_reg=0.002`` (npair),
    ``sigmoid_t_init=10.0``, ``sigmoid_b_init=-10.0`` (logistic).

    Returns:
        Module whose ``forward(views, labels=None)`` returns a scalar loss. Only ``logistic``
        has parameters (``log_temperature``, ``bias``); put them in the optimizer.
    """
    spec = _spec(name)
    accepted = spec.params()
    return spec.factory(**{k: v for k, v in params.items() if k in accepted})
