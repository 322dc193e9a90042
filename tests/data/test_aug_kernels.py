"""Fixed-parameter augmentation kernels (`aug_kernels.py` through `aug_functional.py`)
against torchvision's functional API, and the ops' refusals of bad settings."""

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF

from distcl.data import aug_functional as K
from distcl.data.ffcv_ops import (
    ColorJitter,
    GaussianBlur,
    RandomGrayscale,
    Solarization,
)

from .aug_fixtures import assert_close, colourful_images, tv

torch.set_num_threads(1)


def _images(seed: int, size: tuple[int, int], channels: int) -> list[np.ndarray]:
    """Noise, a smooth gradient, saturated/flat corners: the cases rounding trips over."""
    rng = np.random.default_rng(seed)
    h, w = size
    noise = rng.integers(0, 256, (h, w, channels), dtype=np.uint8)
    ramp = np.linspace(0, 255, h * w * channels).reshape(h, w, channels).astype(np.uint8)
    flat = np.full((h, w, channels), 255, np.uint8)
    flat[: h // 2] = 0
    flat[:, : w // 3] = 128
    return [noise, ramp, flat, colourful_images(1, h, seed)[0][..., :channels].copy()]


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("factor", [0.0, 0.37, 1.0, 1.63])
def test_blend_kernels_match_torchvision(channels, factor):
    for img in _images(int(factor * 100) + channels, (29, 32), channels):
        assert_close(
            K.adjust_brightness(img, factor), tv(img, TF.adjust_brightness, factor), "bright"
        )
        assert_close(K.adjust_contrast(img, factor), tv(img, TF.adjust_contrast, factor), "con")
        sat = K.adjust_saturation(img, factor)
        assert_close(sat, tv(img, TF.adjust_saturation, factor), "saturation")


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("factor", [-0.5, -0.23, 0.0, 0.11, 0.5])
def test_hue_matches_torchvision(channels, factor):
    for img in _images(7, (24, 40), channels):
        assert_close(K.adjust_hue(img, factor), tv(img, TF.adjust_hue, factor), "hue")


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("sigma,ksize", [(0.1, 3), (0.8, 3), (1.3, 9), (2.0, 23), (1.5, 5)])
def test_blur_matches_torchvision(channels, sigma, ksize):
    for img in _images(3, (30, 27), channels):
        ours = K.gaussian_blur(img, sigma, ksize)
        assert_close(ours, tv(img, TF.gaussian_blur, [ksize, ksize], [sigma, sigma]), "blur")


@pytest.mark.parametrize("channels", [1, 3])
def test_grayscale_and_solarize_match_torchvision(channels):
    for img in _images(5, (16, 16), channels):
        grey = K.to_grayscale(img)
        assert_close(grey, tv(img, TF.rgb_to_grayscale, num_output_channels=channels), "grey")
        assert (grey == grey[..., :1]).all()  # C channels, all equal
        for threshold in (0, 128, 200):
            ref = tv(img, TF.solarize, threshold)
            assert_close(K.solarize(img, threshold), ref, "solarize")


def test_kernels_reject_bad_input():
    with pytest.raises(ValueError, match="uint8 H x W x C"):
        K.adjust_brightness(np.zeros((4, 4, 3), np.float32), 1.0)
    with pytest.raises(ValueError, match="ksize must be a positive odd"):
        K.gaussian_blur(np.zeros((4, 4, 3), np.uint8), 1.0, 4)
    with pytest.raises(ValueError, match=r"\[-0.5, 0.5\]"):
        K.adjust_hue(np.zeros((4, 4, 3), np.uint8), 0.7)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: ColorJitter(0.4, p=1.5), "ColorJitter.p"),
        (lambda: ColorJitter(hue=0.6), "ColorJitter.hue"),
        (lambda: ColorJitter(brightness=-1), "ColorJitter.brightness"),
        (lambda: GaussianBlur(kernel_size=4), "kernel_size"),
        (lambda: GaussianBlur(sigma_min=2.0, sigma_max=1.0), "sigma_min"),
        (lambda: RandomGrayscale(-0.1), "RandomGrayscale.p"),
        (lambda: Solarization(threshold=300), "threshold"),
    ],
)
def test_ops_name_the_bad_setting(make, match):
    with pytest.raises(ValueError, match=match):
        make()
