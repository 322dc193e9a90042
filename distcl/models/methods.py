"""Methods: views -> embeddings -> loss. Each method adds only its own parts to the pipeline.

A method is an `nn.Module` whose `forward(views, labels)` returns the scalar training loss, so
the training loop, DDP and gradient caching treat every method alike. `encoder` is the trunk
the probes evaluate; `embed(x)` and `criterion(embeddings, labels)` split the forward for
gradient caching.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from distcl.config import Config
from distcl.losses import build_loss, needs_labels
from distcl.models.encoders import build_encoder
from distcl.models.heads import projection_mlp


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


METHODS = {
    "simclr": lambda enc, cfg, k: SimCLR(enc, cfg),
    "supcon": lambda enc, cfg, k: SimCLR(enc, cfg, use_labels=True),
    "supervised": lambda enc, cfg, k: Supervised(enc, k),
}


def build_method(cfg: Config, in_channels: int, num_classes: int) -> nn.Module:
    """The method named by `cfg.method.name`, with a fresh encoder."""
    encoder = build_encoder(cfg.model.arch, in_channels, cfg.model.width, cfg.model.cifar_stem)
    if cfg.method.name not in METHODS:
        raise ValueError(f"method.name={cfg.method.name!r} is not one of: {', '.join(METHODS)}")
    return METHODS[cfg.method.name](encoder, cfg, num_classes)
