"""data.crop_scale_min, data.jitter, data.jitter_p reach the RGB views of both loaders.

Real FFCV pipelines over a tiny RGB `.beton` written here, and the torchvision fallback over
the same images: with crop scale min 1.0 every crop is the whole image, with jitter 0 (or
jitter_p 0) no colour changes, so each SimCLR view is the image, its mirror, or (greyscale,
p=0.2) their grey version; with the preset's own values almost no view is.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from distcl.config.schema import DataConfig
from distcl.data.beton import write_beton
from distcl.data.loader import split_batch, train_loader
from distcl.data.recipes import GreyRecipe, ViewSpec, config_view_spec, view_recipes
from distcl.data.source_types import ArraySource
from distcl.data.torch_loader import torch_train_loader

from .aug_fixtures import colourful_images

N, SIDE = 64, 32
FULL_PLAIN = {"crop_scale_min": 1.0, "jitter": 0.0}  # whole-image crops, no colour jitter

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def source() -> ArraySource:
    """Labels are image indices, so each view names the image it came from."""
    images = colourful_images(N, SIDE, seed=4)
    return ArraySource("synthetic", "train", images, np.arange(N, dtype=np.int64), N)


@pytest.fixture(scope="module")
def beton(source, tmp_path_factory):
    path = tmp_path_factory.mktemp("keys") / "rgb.beton"
    write_beton(source, path)
    return path


def _ffcv_views(path, spec: ViewSpec) -> tuple[torch.Tensor, torch.Tensor]:
    loader = train_loader(
        path, batch_size=32, views=2, spec=spec, seed=0, distributed=False, num_workers=1
    )
    return _stack(loader)


def _torch_views(source, spec: ViewSpec) -> tuple[torch.Tensor, torch.Tensor]:
    loader = torch_train_loader(source, batch_size=32, views=2, spec=spec, seed=0, num_workers=0)
    return _stack(loader)


def _stack(loader) -> tuple[torch.Tensor, torch.Tensor]:
    """Every view of one epoch, uint8 `2N x 3 x H x W`, and the image index of each."""
    batches = [split_batch(b) for b in loader]
    views = torch.cat([v for vs, _ in batches for v in vs])
    return views, torch.cat([lab.repeat(2) for _, lab in batches])


def _plain_fraction(views, labels, images: np.ndarray) -> tuple[float, bool]:
    """Fraction of views that are the whole image or its mirror, colours untouched; every
    other view must be their grey version (R = G = B, within 1.5 levels of the luma: truncated)."""
    originals = torch.from_numpy(images).permute(0, 3, 1, 2)[labels].int()  # V x 3 x H x W
    views = views.int()
    plain = (views == originals).flatten(1).all(1) | (views == originals.flip(-1)).flatten(1).all(1)
    weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    luma = (originals.float() * weights).sum(1, keepdim=True)
    grey = views.float()
    is_grey = ((grey - grey[:, :1]).abs().amax((1, 2, 3)) == 0) & torch.minimum(
        (grey - luma).abs().amax((1, 2, 3)), (grey - luma.flip(-1)).abs().amax((1, 2, 3))
    ).le(1.5)  # truncated luma
    return plain.float().mean().item(), (plain | is_grey).all().item()


def test_schema_defaults_keep_each_presets_own_values():
    spec = config_view_spec(DataConfig(resolution=32, preset="simclr"))
    assert spec == ViewSpec(32, None, None, None, "simclr")
    own = view_recipes(ViewSpec(32, preset="simclr"), 3, 2)
    assert own[0].scale == (0.08, 1.0) and own[0].jitter == (0.4, 0.4, 0.4, 0.1)
    assert own[0].jitter_p == 0.8
    asked = config_view_spec(DataConfig(crop_scale_min=0.5, jitter=0.2, jitter_p=0.3))
    assert asked == ViewSpec(28, 0.5, 0.2, 0.3, "auto")


def test_rgb_recipes_take_the_keys():
    spec = ViewSpec(32, crop_scale_min=0.3, jitter=0.2, jitter_p=0.5, preset="simclr")
    r = view_recipes(spec, 3, 2)[0]
    assert r.scale == (0.3, 1.0) and r.jitter_p == 0.5
    assert r.jitter == pytest.approx((0.2, 0.2, 0.2, 0.05))  # SimCLR's proportions kept
    byol = view_recipes(ViewSpec(32, jitter=0.8, preset="byol"), 3, 2)[1]
    assert byol.jitter == pytest.approx((0.8, 0.8, 0.4, 0.2)) and byol.solarize_p == 0.2
    multi = view_recipes(ViewSpec(32, crop_scale_min=0.2, preset="multicrop"), 3, 4)
    assert [r.scale for r in multi] == [(0.2, 1.0)] * 2 + [(0.05, 0.14)] * 2  # local: own
    assert view_recipes(ViewSpec(32, jitter=0.3), 1, 2)[0] == GreyRecipe(32, (0.2, 1.0), 0.3, 0.8)


@pytest.mark.parametrize("loader", ["ffcv", "torchvision"])
def test_rgb_views_follow_the_keys(loader, source, beton):
    def views(**keys):
        spec = ViewSpec(SIDE, preset="simclr", **keys)
        return _ffcv_views(beton, spec) if loader == "ffcv" else _torch_views(source, spec)

    def fraction(**keys):
        return _plain_fraction(*views(**keys), source.images)

    plain, only_plain_or_grey = fraction(**FULL_PLAIN)
    assert only_plain_or_grey and plain > 0.6  # greyscale (p=0.2) is the only change left
    plain_p0, only_plain_or_grey_p0 = fraction(crop_scale_min=1.0, jitter_p=0.0)
    assert only_plain_or_grey_p0 and plain_p0 > 0.6
    assert fraction()[0] < 0.05  # the preset's crops and jitter change nearly every view
    assert fraction(jitter=0.0)[0] < 0.05  # crops alone change them
    assert fraction(crop_scale_min=1.0, jitter=0.4, jitter_p=1.0)[0] < 0.05  # jitter alone


def test_a_value_equal_to_the_grey_default_is_honoured_on_rgb():
    """0.2 on a CIFAR preset is the user's value, not "keep the preset's 0.08"; null keeps it."""
    from distcl.config import schema

    cfg = schema.build(
        {"data.resolution": 32, "data.preset": "simclr", "data.crop_scale_min": "0.2"}
        | {"data.jitter": "null", "data.jitter_p": 0.8}
    )
    spec = config_view_spec(cfg.data)
    assert (spec.crop_scale_min, spec.jitter, spec.jitter_p) == (0.2, None, 0.8)
    recipe = view_recipes(spec, 3, 2)[0]
    assert recipe.scale == (0.2, 1.0) and recipe.jitter == (0.4, 0.4, 0.4, 0.1)
