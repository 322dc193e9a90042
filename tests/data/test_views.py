"""View-pipeline presets: each preset's ops and parameters, and a real two-view FFCV Loader."""

import pytest
import torch
from ffcv import transforms as ft
from ffcv.fields.rgb_image import RandomResizedCropRGBImageDecoder

from distcl.data import ffcv_ops as fops
from distcl.data.loader import view_ops
from distcl.data.recipes import ViewSpec
from distcl.data.views import (
    PRESETS,
    auto_preset,
    blur_kernel_size,
    view_pipelines,
    view_resolutions,
)

from .aug_fixtures import write_beton

torch.set_num_threads(1)


def _find(ops, cls):
    found = [op for op in ops if isinstance(op, cls)]
    return found[0] if found else None


def test_auto_preset_follows_channels():
    assert auto_preset(28, 1) == "simclr_grey"
    assert auto_preset(32, 3) == auto_preset(224, 3) == "simclr"
    with pytest.raises(ValueError, match="channels must be 1 or 3, got 4"):
        auto_preset(32, 4)


def test_unknown_preset_lists_the_valid_names():
    with pytest.raises(ValueError, match="unknown view preset 'simclrr'") as err:
        view_pipelines("simclrr", 32, 3)
    for name in ["auto", *PRESETS]:
        assert name in str(err.value)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(channels=2), "channels must be 1 or 3"),
        (dict(n_views=1), "n_views must be >= 2"),
        (dict(tail="fp16"), "tail must be"),
        (dict(resolution=4), "resolution must be >= 8"),
    ],
)
def test_bad_arguments_name_the_setting(kwargs, match):
    args = dict(preset="simclr", resolution=32, channels=3) | kwargs
    with pytest.raises(ValueError, match=match):
        view_pipelines(**args)


def test_simclr_small_images_use_half_strength_and_no_blur():
    views = view_pipelines("simclr", 32, 3)
    assert len(views) == 2 and views[0] is not views[1]
    ops = views[0]
    decoder = ops[0]
    assert isinstance(decoder, RandomResizedCropRGBImageDecoder)
    assert decoder.output_size == (32, 32) and decoder.scale == (0.08, 1.0)
    assert isinstance(ops[1], ft.RandomHorizontalFlip)
    jitter = _find(ops, fops.ColorJitter)
    assert jitter.strengths == pytest.approx((0.4, 0.4, 0.4, 0.1)) and jitter.p == 0.8
    assert _find(ops, fops.RandomGrayscale).p == 0.2
    assert _find(ops, fops.GaussianBlur) is None and _find(ops, fops.Solarization) is None
    assert [type(op) for op in ops[-2:]] == [fops.NormalizeToFloat, ft.ToTensor]


def test_simclr_imagenet_size_uses_full_strength_and_blur():
    ops = view_pipelines("simclr", 224, 3)[1]
    assert _find(ops, fops.ColorJitter).strengths == pytest.approx((0.8, 0.8, 0.8, 0.2))
    blur = _find(ops, fops.GaussianBlur)
    assert (blur.p, blur.sigma_min, blur.sigma_max, blur.kernel_size) == (0.5, 0.1, 2.0, 23)
    assert blur_kernel_size(96) == 9 and blur_kernel_size(32) == 3


def test_simclr_grey_is_the_calibrated_one_channel_recipe():
    ops = view_pipelines("auto", 28, 1)[0]
    assert ops[0].scale == (0.2, 1.0) and isinstance(ops[1], ft.RandomHorizontalFlip)
    brightness, contrast = _find(ops, ft.RandomBrightness), _find(ops, ft.RandomContrast)
    assert (brightness.magnitude, brightness.p) == (contrast.magnitude, contrast.p) == (0.4, 0.8)
    assert _find(ops, fops.ColorJitter) is None and _find(ops, fops.RandomGrayscale) is None
    assert isinstance(ops[4], fops.ToGreyChannel)  # after the jitter, on three equal channels
    # the training loader's ops: the same recipe, the stored three channels kept
    loader_ops = view_ops(ViewSpec(28), 1, 2)[0]
    assert [type(op) for op in loader_ops] == [type(op) for op in ops[:4]]


def test_byol_views_are_asymmetric():
    views = view_pipelines("byol", 96, 3, n_views=4)
    blur_p = [_find(v, fops.GaussianBlur).p for v in views]
    solar = [_find(v, fops.Solarization) for v in views]
    assert blur_p == [1.0, 0.1, 1.0, 0.1]
    assert solar[0] is None and solar[1].p == 0.2 and solar[1].threshold == 128
    for v in views:
        assert _find(v, fops.ColorJitter).strengths == (0.4, 0.4, 0.2, 0.1)
        assert _find(v, fops.RandomGrayscale).p == 0.2


def test_multicrop_has_two_global_and_smaller_local_views():
    views = view_pipelines("multicrop", 224, 3, n_views=6)
    assert [v[0].scale for v in views] == [(0.14, 1.0)] * 2 + [(0.05, 0.14)] * 4
    assert [v[0].output_size for v in views] == [(224, 224)] * 2 + [(96, 96)] * 4
    assert view_resolutions("multicrop", 224, 6) == [224, 224, 96, 96, 96, 96]
    assert view_resolutions("multicrop", 32, 3, local_resolution=16) == [32, 32, 16]


def test_every_view_gets_its_own_op_objects():
    views = view_pipelines("simclr", 32, 3, n_views=3)
    ids = [id(op) for v in views for op in v]
    assert len(ids) == len(set(ids))


def test_tails():
    uint8 = view_pipelines("simclr", 32, 3, tail="uint8")[0]
    assert [type(op) for op in uint8[-2:]] == [ft.ToTensor, ft.ToTorchImage]
    assert uint8[-1].channels_last is False
    assert _find(uint8, fops.NormalizeToFloat) is None
    bare = view_pipelines("simclr", 32, 3, tail="none")[0]
    assert isinstance(bare[-1], fops.RandomGrayscale) and _find(bare, ft.ToTensor) is None


@pytest.fixture(scope="module")
def loader_batches(tmp_path_factory):
    """One epoch of a real Loader: both BYOL views plus a grey simclr_grey view, all from
    the one stored image field (one compile, ~20 s of numba, mostly FFCV's decoders)."""
    from ffcv.loader import Loader, OrderOption
    from ffcv.pipeline import PipelineSpec

    path = write_beton(tmp_path_factory.mktemp("beton") / "views.beton", n=256, side=32)
    byol = view_pipelines("byol", 32, 3)
    grey = view_pipelines("simclr_grey", 32, 1, mean=(0.5,), std=(0.25,))[0]
    loader = Loader(
        str(path),
        batch_size=32,
        num_workers=1,
        order=OrderOption.RANDOM,
        seed=0,
        pipelines={
            "image": byol[0],
            "image_v2": PipelineSpec("image", transforms=byol[1]),
            "image_v3": PipelineSpec("image", transforms=grey),
        },
    )
    return [tuple(t.clone() for t in batch) for batch in loader]


def _total_variation(x: torch.Tensor) -> float:
    return (x[..., 1:] - x[..., :-1]).abs().mean().item()


def test_presets_run_inside_a_loader(loader_batches):
    assert len(loader_batches) == 8
    v1, labels, v2, grey = loader_batches[0]
    assert v1.shape == v2.shape == (32, 3, 32, 32) and v1.dtype == v2.dtype == torch.float32
    assert grey.shape == (32, 1, 32, 32) and labels.shape[0] == 32
    first = torch.cat([b[0] for b in loader_batches])  # 256 x 3 x 32 x 32
    second = torch.cat([b[2] for b in loader_batches])
    assert 0.0 <= first.min() and first.max() <= 1.0  # x / 255
    greys = torch.cat([b[3] for b in loader_batches])
    assert greys.min() >= -2.0 and greys.max() <= 2.0 and greys.min() < 0  # (x - .5) / .25
    assert (first != second).flatten(1).any(1).float().mean() > 0.95
    # BYOL's first view is always blurred, the second one 10% of the time.
    assert _total_variation(first) < 0.9 * _total_variation(second)
