"""View-pipeline presets: per view, the FFCV decoder and compiled augmentations.

`view_pipelines(preset, resolution, channels, n_views)` returns one op list per view. Each
list starts with the RandomResizedCrop decoder (the preset's scale), then per-image
augmentations from `ffcv_ops.py`, then a tail chosen by `tail`:
- "float" (default): `NormalizeToFloat(mean, std)` (compiled: uint8 `B x H x W x C` ->
  float32 `B x C x H x W`, `(x / 255 - mean) / std`; mean=None, std=None gives x / 255 in
  [0, 1]), then `ToTensor()`: the loader yields contiguous float32 `B x C x H x W`.
  NormalizeToFloat writes the CHW layout itself, so no ToTorchImage follows (one pass
  fewer).
- "uint8": `ToTensor()`, `ToTorchImage(channels_last=False)`: uint8 `B x C x H x W`
  (normalise on the device; 4x less host-to-device traffic).
- "none": stop after the augmentations (uint8 `B x H x W x C` numpy), to add your own tail.
For channels = 1 a `ToGreyChannel` op follows the decoder (FFCV stores RGB), so every
output has C = channels; the grey recipe (simclr_grey, `GreyRecipe`) runs FFCV's own
RandomBrightness and RandomContrast on the three equal stored channels and reduces to one
channel after them (`augment_ops`, which the training loader calls without the reduction).

Presets and their parameters live in `distcl.data.recipes` (no FFCV import there, so the
torchvision fallback loader shares them).
"""

from typing import Literal

from ffcv.fields.rgb_image import RandomResizedCropRGBImageDecoder
from ffcv.pipeline.operation import Operation
from ffcv.transforms import (
    RandomBrightness,
    RandomContrast,
    RandomHorizontalFlip,
    ToTensor,
    ToTorchImage,
)

from distcl.data.ffcv_ops import (
    ColorJitter,
    GaussianBlur,
    NormalizeToFloat,
    RandomGrayscale,
    Solarization,
    ToGreyChannel,
)
from distcl.data.recipes import (
    BLUR_SIGMA,
    PRESETS,
    SOLARIZE_THRESHOLD,
    GreyRecipe,
    Recipe,
    auto_preset,
    blur_kernel_size,
    check_view_args,
    recipes,
)

__all__ = [
    "PRESETS",
    "augment_ops",
    "auto_preset",
    "blur_kernel_size",
    "view_pipelines",
    "view_resolutions",
]


def augment_ops(recipe: Recipe | GreyRecipe, channels: int) -> list[Operation]:
    """The decoder and per-image augmentations of one view, before any tail.

    A GreyRecipe keeps the three equal stored channels (the training loader yields 3 x H x W);
    a Recipe reduces them to one first when channels = 1.
    """
    res = recipe.resolution
    ops: list[Operation] = [RandomResizedCropRGBImageDecoder((res, res), scale=recipe.scale)]
    if isinstance(recipe, GreyRecipe):
        return ops + [
            RandomHorizontalFlip(),
            RandomBrightness(recipe.jitter, p=recipe.p),
            RandomContrast(recipe.jitter, p=recipe.p),
        ]
    if channels == 1:
        ops.append(ToGreyChannel())
    ops.append(RandomHorizontalFlip(0.5))
    if recipe.jitter_p > 0 and any(recipe.jitter):
        ops.append(ColorJitter(*recipe.jitter, p=recipe.jitter_p))
    if recipe.grey_p > 0 and channels == 3:
        ops.append(RandomGrayscale(recipe.grey_p))
    if recipe.blur_p > 0:
        ops.append(GaussianBlur(recipe.blur_p, *BLUR_SIGMA, blur_kernel_size(res)))
    if recipe.solarize_p > 0:
        ops.append(Solarization(recipe.solarize_p, threshold=SOLARIZE_THRESHOLD))
    return ops


def _ops(
    recipe: Recipe | GreyRecipe,
    channels: int,
    tail: str,
    mean: tuple[float, ...] | None,
    std: tuple[float, ...] | None,
) -> list[Operation]:
    ops = augment_ops(recipe, channels)
    if isinstance(recipe, GreyRecipe) and channels == 1:
        ops.append(ToGreyChannel())  # the three channels are still equal: exact
    if tail == "float":
        ops += [NormalizeToFloat(mean, std), ToTensor()]
    elif tail == "uint8":
        ops += [ToTensor(), ToTorchImage(channels_last=False)]
    return ops


def view_resolutions(
    preset: str, resolution: int, n_views: int = 2, local_resolution: int | None = None
) -> list[int]:
    """Output side in pixels of each view (differs only for multicrop's local views)."""
    preset = auto_preset(resolution, 3) if preset == "auto" else preset
    return [r.resolution for r in recipes(preset, resolution, n_views, local_resolution)]


def view_pipelines(
    preset: str,
    resolution: int,
    channels: int,
    n_views: int = 2,
    *,
    local_resolution: int | None = None,
    tail: Literal["float", "uint8", "none"] = "float",
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
) -> list[list[Operation]]:
    """Per view, the FFCV op list: decoder, augmentations, tail (see the module docstring).

    preset: a name in PRESETS, or "auto" for `auto_preset(resolution, channels)`.
    resolution: output side in pixels (multicrop: of the global views).
    channels: 1 or 3; the stored RGB image is reduced to grey when 1.
    n_views: number of views (multicrop: 2 global + n_views - 2 local).
    local_resolution: multicrop's local view side; default resolution * 96 / 224.
    tail: "float", "uint8" or "none"; mean, std: per-channel, in [0, 1] units, for "float".
    Every call builds fresh op objects: FFCV ops hold per-pipeline state.
    """
    check_view_args(resolution, channels, n_views)
    if tail not in ("float", "uint8", "none"):
        raise ValueError(f"tail must be 'float', 'uint8' or 'none', got {tail!r}")
    if preset == "auto":
        preset = auto_preset(resolution, channels)
    per_view = recipes(preset, resolution, n_views, local_resolution)
    return [_ops(r, channels, tail, mean, std) for r in per_view]
