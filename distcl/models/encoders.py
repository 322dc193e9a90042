"""Encoders: a small CNN for CPU runs, torchvision ResNets for GPU presets, and (text.py) a
byte-token Transformer for text datasets.

Every image encoder maps `B x C x H x W` images to `B x feat_dim` features (after global average
pooling), the text encoder `B x L` token ids; `encoder.feat_dim` gives the size the projector
and the probes build on.
"""

from __future__ import annotations

import torch
from torch import nn

from distcl.config import names
from distcl.models.text import build_text_encoder


def _conv_bn(c_in: int, c_out: int, stride: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    ]


class ResidualBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity shortcut (He et al. 2016, basic block)."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            *_conv_bn(channels, channels),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.body(x))


class SmallCNN(nn.Module):
    """ResNet-style CNN for 28-32 px images, sized for CPU training.

    Widths w-2w-4w and a last conv of `feat_dim` channels (default 8w), two 2x downsamplings and
    `blocks` residual blocks at the 2w stage (after the first downsampling, where they are
    cheapest), then global average pooling: `B x C x H x W -> B x feat_dim`. w=16, one block and
    feat_dim=128 cost about 14.5 M multiply-adds per 28 px image; no block and feat_dim=256 cost
    about the same and give the linear probe twice the features.

    `stride2` (`model.arch=small_cnn_s2`) makes the first downsampling the second conv's stride
    instead of a max-pool after it: that conv then runs on 14 x 14 instead of 28 x 28, so it
    costs a quarter (11.8 M multiply-adds per image in all instead of 14.5 M), and the largest
    activation map (2w x 28 x 28, with its batch norm, ReLU and pooling) is gone.
    """

    def __init__(
        self,
        in_channels: int = 1,
        width: int = 16,
        blocks: int = 1,
        feat_dim: int = 0,
        stride2: bool = False,
    ):
        super().__init__()
        w = width
        feat_dim = feat_dim or 8 * w
        down = _conv_bn(w, 2 * w, stride=2) if stride2 else [*_conv_bn(w, 2 * w), nn.MaxPool2d(2)]
        self.net = nn.Sequential(
            *_conv_bn(in_channels, w),
            *down,  # 28 -> 14
            *[ResidualBlock(2 * w) for _ in range(blocks)],
            *_conv_bn(2 * w, 4 * w),
            nn.MaxPool2d(2),  # 14 -> 7
            *_conv_bn(4 * w, feat_dim),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.feat_dim = feat_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # B x feat_dim


class TorchvisionResNet(nn.Module):
    """torchvision ResNet-18/50 trunk without its classifier: `B x C x H x W -> B x 512|2048`.

    `cifar_stem` swaps the 7x7/2 stem and max-pool for a 3x3/1 conv, as SimCLR does for
    CIFAR-10 (Chen et al. 2020, Appendix B.9), so 32 px images keep their spatial detail.
    """

    def __init__(self, arch: str, in_channels: int = 3, cifar_stem: bool = True):
        super().__init__()
        import torchvision

        net = getattr(torchvision.models, arch)(weights=None)
        if cifar_stem:
            net.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
            net.maxpool = nn.Identity()
        elif in_channels != 3:
            net.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        self.feat_dim = net.fc.in_features
        net.fc = nn.Identity()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def build_encoder(
    arch: str,
    in_channels: int,
    width: int = 16,
    cifar_stem: bool = True,
    blocks: int = 1,
    feat_dim: int = 0,
):
    if arch in names.SMALL_CNN_ARCHS:
        return SmallCNN(in_channels, width, blocks, feat_dim, stride2=arch == "small_cnn_s2")
    if arch in ("resnet18", "resnet50"):
        return TorchvisionResNet(arch, in_channels, cifar_stem)
    if arch == "text_transformer":  # width = model width, blocks = layers, a head per 32 dims
        return build_text_encoder(width=width, layers=blocks, heads=max(1, width // 32))
    raise ValueError(f"model.arch={arch!r} is not one of: {', '.join(names.ARCHS)}")


def encoder_from_config(model_cfg, in_channels: int) -> nn.Module:
    """`build_encoder` from a `ModelConfig` (the one place that maps its fields)."""
    m = model_cfg
    return build_encoder(m.arch, in_channels, m.width, m.cifar_stem, m.blocks, m.feat_dim)
