"""Methods: views -> embeddings -> loss. Each method adds only its own parts to the pipeline.

`METHODS` maps `method.name` to a factory; `build_method(cfg, in_channels, num_classes)` is the
entry point the training loop calls. SimCLR, SupCon and the supervised baseline live here; the
methods with state (EMA targets, queues, prototypes) have one file each: moco.py, byol.py,
swav.py, barlow.py, with the EMA target in ema.py. All state is in parameters and buffers, so a
checkpoint of `state_dict()` restores it. Hooks the loop calls when present:
`before_optimizer_step(epoch)` (SwAV: frozen prototypes) and
`after_optimizer_step(step, total_steps)` (EMA updates, prototype normalisation).

A method is an `nn.Module` whose `forward(views, labels)` returns the scalar training loss, so
the training loop, DDP and gradient caching treat every method alike. `encoder` is the trunk
the probes evaluate; `embed(x)` and `criterion(embeddings, labels)` split the forward for
gradient caching.
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
from distcl.models.byol import BYOL
from distcl.models.encoders import encoder_from_config
from distcl.models.heads import projection_mlp
from distcl.models.moco import MoCoV2, MoCoV3
from distcl.models.swav import SwAV


class SimCLR(nn.Module):
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


class Supervised(nn.Module):
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


def _moco_v2(enc: nn.Module, cfg: Config, k: int) -> nn.Module:
    m = cfg.method
    return MoCoV2(
        enc,
        hidden=cfg.model.proj_hidden,
        dim=cfg.model.proj_dim,
        queue_size=m.queue_size,
        temperature=m.moco_temperature,
        momentum=m.momentum,
        momentum_final=m.momentum_final,
    )


def _moco_v3(enc: nn.Module, cfg: Config, k: int) -> nn.Module:
    m = cfg.method
    return MoCoV3(
        enc,
        hidden=cfg.model.proj_hidden,
        dim=cfg.model.proj_dim,
        predictor_hidden=m.predictor_hidden,
        temperature=m.moco_temperature,
        momentum=m.momentum,
        momentum_final=m.momentum_final,
    )


def _byol(enc: nn.Module, cfg: Config, k: int) -> nn.Module:
    m = cfg.method
    return BYOL(
        enc,
        hidden=cfg.model.proj_hidden,
        dim=cfg.model.proj_dim,
        predictor_hidden=m.predictor_hidden,
        momentum=m.momentum,
        momentum_final=m.momentum_final,
    )


def _swav(enc: nn.Module, cfg: Config, k: int) -> nn.Module:
    m = cfg.method
    return SwAV(
        enc,
        hidden=cfg.model.proj_hidden,
        dim=cfg.model.proj_dim,
        prototypes=m.swav_prototypes,
        temperature=m.swav_temperature,
        epsilon=m.swav_epsilon,
        sinkhorn_iters=m.swav_sinkhorn_iters,
        queue_size=m.swav_queue_size,
        queue_start_epoch=m.swav_queue_start_epoch,
        freeze_prototypes_epochs=m.freeze_prototypes_epochs,
    )


def _barlow(enc: nn.Module, cfg: Config, k: int) -> nn.Module:
    m = cfg.method
    return BarlowTwins(
        enc,
        hidden=cfg.model.proj_hidden,
        dim=cfg.model.proj_dim,
        lambd=m.barlow_lambda,
        scale_loss=m.barlow_scale_loss,
    )


# method.name -> factory(encoder, cfg, num_classes). The heads' widths come from model.proj_*.
METHODS: dict[str, Callable[[nn.Module, Config, int], nn.Module]] = {
    "simclr": lambda enc, cfg, k: SimCLR(enc, cfg),
    "supcon": lambda enc, cfg, k: SimCLR(enc, cfg, use_labels=True),
    "supervised": lambda enc, cfg, k: Supervised(enc, k),
    "moco_v2": _moco_v2,  # He et al. 2020 / Chen et al. 2020b: momentum encoder + key queue
    "moco_v3": _moco_v3,  # Chen et al. 2021: momentum encoder + predictor, symmetric, no queue
    "byol": _byol,  # Grill et al. 2020: predictor + EMA target, no negatives
    "swav": _swav,  # Caron et al. 2020: Sinkhorn codes over prototypes, multi-crop
    "barlow": _barlow,  # Zbontar et al. 2021: cross-correlation to the identity
}
# Methods whose forward splits into embed + loss_from_embeddings (train.chunk_size > 0).
GRADCACHE_METHODS = ("simclr", "supcon")


def check_method_config(cfg: Config) -> None:
    """Raise ValueError naming the setting when `cfg` asks for something a method cannot do."""
    name = cfg.method.name
    if name not in METHODS:
        raise ValueError(f"method.name={name!r} is not one of: {', '.join(METHODS)}")
    if cfg.train.chunk_size and name not in GRADCACHE_METHODS:
        raise ValueError(
            f"train.chunk_size={cfg.train.chunk_size} (gradient caching) works with method.name "
            f"in {GRADCACHE_METHODS}, not {name}; set train.chunk_size=0"
        )
    two_views = ("moco_v2", "moco_v3", "byol", "barlow")
    if name in two_views and cfg.data.views != 2:
        raise ValueError(f"method.name={name} uses 2 views, got data.views={cfg.data.views}")
    if name == "moco_v2" and cfg.method.queue_size < cfg.train.global_batch:
        raise ValueError(
            f"method.queue_size={cfg.method.queue_size} must be >= train.global_batch="
            f"{cfg.train.global_batch} (MoCo v2: 65536)"
        )


def build_method(cfg: Config, in_channels: int, num_classes: int) -> nn.Module:
    """The method named by `cfg.method.name`, with a fresh encoder."""
    check_method_config(cfg)
    encoder = encoder_from_config(cfg.model, in_channels)
    return METHODS[cfg.method.name](encoder, cfg, num_classes)
