"""Methods: views -> embeddings -> loss. Each method adds only its own parts to the pipeline.

`METHODS` maps `method.name` to a factory; `build_method(cfg, in_channels, num_classes)` is the
entry point the training loop calls. SimCLR, SupCon and the supervised baseline live here; the
methods with state (EMA targets, queues, prototypes) have one file each: moco.py, byol.py,
swav.py, barlow.py, with the EMA target in ema.py. All state is in parameters and buffers, so a
checkpoint of `state_dict()` restores it.

Every method subclasses `Method` (base.py, imported here): `forward(views, labels)` returns the
scalar training loss, `encoder` is the trunk the probes evaluate, and the loop calls
`before_optimizer_step(epoch)` (SwAV: frozen prototypes) and
`after_optimizer_step(step, total_steps)` (EMA updates, prototype normalisation) on every
method, each a no-op unless the method overrides it. SimCLR's `embed(x)` and
`loss_from_embeddings(z, labels)` split its forward for gradient caching.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from distcl.config.schema import Config
from distcl.losses import build_loss, needs_labels
from distcl.models.barlow import BarlowTwins
from distcl.models.base import Method
from distcl.models.byol import BYOL
from distcl.models.ema import Momentum
from distcl.models.encoders import encoder_from_config
from distcl.models.heads import projection_mlp
from distcl.models.moco import MoCoV2, MoCoV3
from distcl.models.swav import SwAV


class SimCLR(Method):
    """SimCLR (Chen et al. 2020): encoder + projection MLP + a loss from distcl.losses.

    All views go through the encoder as one concatenated batch (`V*B x C x H x W`), so batch
    norm sees every view at once, as in the reference implementation. `use_labels` turns it into
    SupCon (Khosla et al. 2020): the same loss, with class labels defining the positives.
    """

    def __init__(self, encoder: nn.Module, cfg: Config, use_labels: bool = False):
        super().__init__()
        self.encoder = encoder
        self.projector = projection_mlp(encoder.feat_dim, cfg.model.proj_hidden, cfg.model.proj_dim)
        params = {k: v for k, v in dataclasses.asdict(cfg.loss).items() if k != "name"}
        self.criterion = build_loss(cfg.loss.name, **params)
        self.use_labels = use_labels or needs_labels(cfg.loss.name)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self.encoder(x))  # B x proj_dim

    def loss_from_embeddings(self, z: list[torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
        # The loss runs in fp32 even under bf16 autocast: exp(sim / T) overflows bf16's mantissa.
        return self.criterion([e.float() for e in z], labels if self.use_labels else None)

    def forward(self, views: list[torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
        z = self.embed(torch.cat(views))  # V*B x D
        return self.loss_from_embeddings(list(z.chunk(len(views))), labels)


class Supervised(Method):
    """Supervised baseline: the same encoder with a linear classifier and cross-entropy on every
    augmented view, trained with the same budget and pipeline as the self-supervised methods."""

    def __init__(self, encoder: nn.Module, num_classes: int):
        super().__init__()
        self.encoder = encoder
        self.classifier = nn.Linear(encoder.feat_dim, num_classes)
        self.use_labels = True

    def forward(self, views: list[torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
        logits = self.classifier(self.encoder(torch.cat(views))).float()  # V*B x K
        return F.cross_entropy(logits, labels.repeat(len(views)))


Factory = Callable[[nn.Module, Config, int], Method]  # (encoder, cfg, num_classes) -> method


def _headed(cls: Callable[..., Method], ema: bool = False, **settings: str) -> Factory:
    """Factory of `cls(encoder, hidden=model.proj_hidden, dim=model.proj_dim, **kwargs)`: each
    keyword of `settings` takes the `method` setting it names; `ema` adds `momentum`, the
    `Momentum` from `method.momentum` to `method.momentum_final`."""

    def build(enc: nn.Module, cfg: Config, k: int) -> Method:
        m = cfg.method
        kwargs = {arg: getattr(m, name) for arg, name in settings.items()}
        if ema:
            kwargs["momentum"] = Momentum(m.momentum, m.momentum_final)
        return cls(enc, hidden=cfg.model.proj_hidden, dim=cfg.model.proj_dim, **kwargs)

    return build


# SwAV's arguments read from the `method.swav_<argument>` settings.
_SWAV = "prototypes temperature epsilon sinkhorn_iters queue_size queue_start_epoch".split()
_MOCO = {"temperature": "moco_temperature"}

# method.name -> factory(encoder, cfg, num_classes). The heads' widths come from model.proj_*.
METHODS: dict[str, Factory] = {
    "simclr": lambda enc, cfg, k: SimCLR(enc, cfg),
    "supcon": lambda enc, cfg, k: SimCLR(enc, cfg, use_labels=True),
    "supervised": lambda enc, cfg, k: Supervised(enc, k),
    # He et al. 2020 / Chen et al. 2020b: momentum encoder + key queue
    "moco_v2": _headed(MoCoV2, ema=True, queue_size="queue_size", **_MOCO),
    # Chen et al. 2021: momentum encoder + predictor, symmetric, no queue
    "moco_v3": _headed(MoCoV3, ema=True, predictor_hidden="predictor_hidden", **_MOCO),
    # Grill et al. 2020: predictor + EMA target, no negatives
    "byol": _headed(BYOL, ema=True, predictor_hidden="predictor_hidden"),
    # Caron et al. 2020: Sinkhorn codes over prototypes, multi-crop
    "swav": _headed(
        SwAV, freeze_prototypes_epochs="freeze_prototypes_epochs", **{a: f"swav_{a}" for a in _SWAV}
    ),
    # Zbontar et al. 2021: cross-correlation to the identity
    "barlow": _headed(BarlowTwins, lambd="barlow_lambda", scale_loss="barlow_scale_loss"),
}


def build_method(cfg: Config, in_channels: int, num_classes: int) -> Method:
    """The method named by `cfg.method.name`, with a fresh encoder. `cfg` has passed
    distcl/config/rules.py (every built Config has), which says what each method allows."""
    encoder = encoder_from_config(cfg.model, in_channels)
    return METHODS[cfg.method.name](encoder, cfg, num_classes)
