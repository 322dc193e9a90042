"""The FFCV view pipelines, applied per image with torchvision (the DataLoader fallback).

Same recipes (`distcl.data.recipes`), same order, same parameter ranges as the FFCV ops, one
image at a time, every random decision drawn from the numpy Generator passed in:
RandomResizedCrop (FFCV's `get_random_crop`: 10 tries of scale x log-uniform aspect 3/4..4/3,
then a centre crop), flip p=0.5, colour jitter with probability p in a random order, greyscale,
Gaussian blur (sigma 0.1-2, kernel 10% of the side), solarization. The colour functions are
torchvision's, which `aug_kernels.py` reproduces to within one grey level. The resize differs:
FFCV uses OpenCV's INTER_AREA, this uses antialiased bilinear interpolation.

A `GreyRecipe` (simclr_grey, auto on 1-channel data) is crop, flip, then brightness and
contrast, each applied with probability `p` on its own, as FFCV's RandomBrightness and
RandomContrast. Which recipe each view gets is `recipes.view_recipes`, for both loaders.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torchvision.transforms.v2 import functional as F

from distcl.data.recipes import BLUR_SIGMA, SOLARIZE_THRESHOLD, GreyRecipe, Recipe, blur_kernel_size

ASPECT = (3 / 4, 4 / 3)  # RandomResizedCrop aspect-ratio range (torchvision and FFCV default)


def crop_box(
    height: int, width: int, scale: tuple[float, float], rng: np.random.Generator
) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a random resized crop, drawn as FFCV's `get_random_crop` does."""
    area = height * width
    lo, hi = math.log(ASPECT[0]), math.log(ASPECT[1])
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(lo, hi))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    ratio = width / height  # fallback: the whole image, clipped to the aspect range
    if ratio < ASPECT[0]:
        w, h = width, int(round(width / ASPECT[0]))
    elif ratio > ASPECT[1]:
        w, h = int(round(height * ASPECT[1])), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def _factor(strength: float, rng: np.random.Generator) -> float:
    return float(rng.uniform(max(0.0, 1.0 - strength), 1.0 + strength))


def _jitter(img: torch.Tensor, strengths: tuple[float, ...], rng: np.random.Generator):
    """Brightness, contrast, saturation, hue in a random order (torchvision ColorJitter)."""
    b, c, s, h = strengths
    factors = [_factor(b, rng), _factor(c, rng), _factor(s, rng), float(rng.uniform(-h, h))]
    for k in rng.permutation(4):
        if strengths[k] == 0 or (k >= 2 and img.shape[0] == 1):
            continue  # disabled, or saturation/hue of a grey image (no-ops in torchvision)
        fn = (F.adjust_brightness, F.adjust_contrast, F.adjust_saturation, F.adjust_hue)[k]
        img = fn(img, factors[k])
    return img


def augment(
    img: torch.Tensor, recipe: Recipe | GreyRecipe, rng: np.random.Generator
) -> torch.Tensor:
    """One view of `img` (uint8 `C x H x W`, C = 1 or 3) -> uint8 `C x R x R`."""
    res = recipe.resolution
    top, left, h, w = crop_box(img.shape[1], img.shape[2], recipe.scale, rng)
    img = F.resized_crop(img, top, left, h, w, [res, res], antialias=True)
    if rng.random() < 0.5:
        img = F.horizontal_flip(img)
    if isinstance(recipe, GreyRecipe):
        if rng.random() < recipe.p:
            img = F.adjust_brightness(img, _factor(recipe.jitter, rng))
        if rng.random() < recipe.p:
            img = F.adjust_contrast(img, _factor(recipe.jitter, rng))
        return img
    if recipe.jitter_p > 0 and any(recipe.jitter) and rng.random() < recipe.jitter_p:
        img = _jitter(img, recipe.jitter, rng)
    if recipe.grey_p > 0 and img.shape[0] == 3 and rng.random() < recipe.grey_p:
        img = F.rgb_to_grayscale(img, num_output_channels=3)
    if recipe.blur_p > 0 and rng.random() < recipe.blur_p:
        k, sigma = blur_kernel_size(res), float(rng.uniform(*BLUR_SIGMA))
        img = F.gaussian_blur(img, [k, k], [sigma, sigma])
    if recipe.solarize_p > 0 and rng.random() < recipe.solarize_p:
        img = F.solarize(img, SOLARIZE_THRESHOLD)
    return img
