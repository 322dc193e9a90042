"""The small CNN's two shapes: what `small_cnn_s2` changes and what it keeps."""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from distcl.models.encoders import build_encoder


def _macs(arch: str) -> int:
    encoder = build_encoder(arch, 1, width=16, blocks=0, feat_dim=256)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        encoder(torch.zeros(1, 1, 28, 28))
    return counter.get_total_flops() // 2


def test_the_stride2_shape_costs_less_per_image_with_the_same_weights_and_features():
    pooled = build_encoder("small_cnn", 1, width=16, blocks=0, feat_dim=256)
    strided = build_encoder("small_cnn_s2", 1, width=16, blocks=0, feat_dim=256)
    shapes = [p.shape for p in pooled.state_dict().values()]
    # the same parameters and buffers (so the same checkpoint layout), one max-pool fewer
    assert shapes == [p.shape for p in strided.state_dict().values()]
    assert strided.feat_dim == pooled.feat_dim == 256
    assert strided(torch.randn(3, 1, 28, 28)).shape == (3, 256)
    # the convs' multiply-adds per 28 px image, as the docstring says: 14.5 M and 11.8 M
    assert abs(_macs("small_cnn") / 1e6 - 14.5) < 0.1
    assert abs(_macs("small_cnn_s2") / 1e6 - 11.8) < 0.1


def test_the_stride2_shape_downsamples_in_the_second_conv():
    strided = build_encoder("small_cnn_s2", 1, width=8, blocks=1)
    convs = [m for m in strided.modules() if isinstance(m, torch.nn.Conv2d)]
    pools = [m for m in strided.modules() if isinstance(m, torch.nn.MaxPool2d)]
    assert convs[1].stride == (2, 2) and all(c.stride == (1, 1) for c in convs[2:])
    assert len(pools) == 1
    sizes = []
    strided.net[3].register_forward_hook(lambda m, i, o: sizes.append(o.shape[-1]))
    strided(torch.randn(2, 1, 28, 28))
    assert sizes == [14]  # the second conv already outputs 14 x 14
