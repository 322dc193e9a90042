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
output has C = channels.

Presets (names in PRESETS):
- simclr: Chen et al. 2020, App. A: crop 0.08-1, flip, jitter (0.8s, 0.8s, 0.8s, 0.2s) p=0.8,
  greyscale p=0.2, blur p=0.5 (sigma 0.1-2, kernel 10% of the side) only at >= 96 px.
  s = 0.5 at <= 64 px (their CIFAR-10 setting, App. B.9), else 1.0.
- simclr_grey: crop 0.2-1, flip, brightness and contrast 0.4 with p=0.8: distcl's calibrated
  CPU recipe for 1-channel images (DESIGN.md "Measured speed": 86.8% linear probe on
  Fashion-MNIST after 4 CPU-minutes).
- byol: Grill et al. 2020, Table 6: crop 0.08-1, flip, jitter (0.4, 0.4, 0.2, 0.1) p=0.8,
  greyscale 0.2; blur p=1.0 / 0.1 and solarize p=0.0 / 0.2 on views 1 / 2 (odd / even).
- multicrop: Caron et al. 2020 (SwAV): views 0-1 global (scale 0.14-1, `resolution`), the
  rest local (scale 0.05-0.14, `local_resolution`, default resolution * 96 / 224 as SwAV's
  224/96); colour as simclr at the global resolution.
"""

from dataclasses import dataclass
from typing import Literal

from ffcv.fields.rgb_image import RandomResizedCropRGBImageDecoder
from ffcv.pipeline.operation import Operation
from ffcv.transforms import RandomHorizontalFlip, ToTensor, ToTorchImage

from distcl.data.ffcv_ops import (
    ColorJitter,
    GaussianBlur,
    NormalizeToFloat,
    RandomGrayscale,
    Solarization,
    ToGreyChannel,
)

PRESETS: dict[str, str] = {
    "simclr": "Chen et al. 2020 (SimCLR), Appendix A",
    "simclr_grey": "distcl calibrated 1-channel recipe (DESIGN.md, Measured speed)",
    "byol": "Grill et al. 2020 (BYOL), Table 6",
    "multicrop": "Caron et al. 2020 (SwAV), multi-crop",
}
SMALL_IMAGE_PX = 64  # <= this: CIFAR-size, SimCLR jitter strength 0.5 (App. B.9)
BLUR_MIN_PX = 96  # >= this: Gaussian blur on (SimCLR drops it for CIFAR, App. B.9)


@dataclass(frozen=True)
class _Recipe:
    """One view's augmentation settings."""

    resolution: int  # output side in pixels
    scale: tuple[float, float]  # RandomResizedCrop area fraction range
    jitter: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)  # b, c, s, h strengths
    jitter_p: float = 0.8  # probability of colour jitter per image
    grey_p: float = 0.0  # probability of greyscale per image
    blur_p: float = 0.0  # probability of Gaussian blur per image
    solarize_p: float = 0.0  # probability of solarization per image


def auto_preset(resolution: int, channels: int) -> str:
    """The preset for a dataset: simclr_grey for 1-channel images, simclr for RGB."""
    if channels == 1:
        return "simclr_grey"
    if channels == 3:
        return "simclr"
    raise ValueError(f"channels must be 1 or 3, got {channels} (convert the images to L or RGB)")


def blur_kernel_size(resolution: int) -> int:
    """SimCLR's blur kernel: 10% of the image side, made odd, at least 3 (23 at 224 px)."""
    k = max(3, int(0.1 * resolution))
    return k if k % 2 == 1 else k + 1


def _simclr_recipe(resolution: int, scale: tuple[float, float], at_px: int) -> _Recipe:
    s = 0.5 if at_px <= SMALL_IMAGE_PX else 1.0
    return _Recipe(
        resolution,
        scale,
        jitter=(0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s),
        grey_p=0.2,
        blur_p=0.5 if at_px >= BLUR_MIN_PX else 0.0,
    )


def _recipes(
    preset: str, resolution: int, n_views: int, local_resolution: int | None
) -> list[_Recipe]:
    if preset == "simclr":
        return [_simclr_recipe(resolution, (0.08, 1.0), resolution)] * n_views
    if preset == "simclr_grey":
        return [_Recipe(resolution, (0.2, 1.0), jitter=(0.4, 0.4, 0.0, 0.0))] * n_views
    if preset == "byol":
        byol = dict(jitter=(0.4, 0.4, 0.2, 0.1), grey_p=0.2)
        pair = [
            _Recipe(resolution, (0.08, 1.0), blur_p=1.0, solarize_p=0.0, **byol),
            _Recipe(resolution, (0.08, 1.0), blur_p=0.1, solarize_p=0.2, **byol),
        ]
        return [pair[v % 2] for v in range(n_views)]
    if preset == "multicrop":
        local = local_resolution or max(8, round(resolution * 96 / 224))
        glob = _simclr_recipe(resolution, (0.14, 1.0), resolution)
        loc = _simclr_recipe(local, (0.05, 0.14), resolution)
        return [glob if v < 2 else loc for v in range(n_views)]
    names = ", ".join(["auto", *PRESETS])
    raise ValueError(f"unknown view preset {preset!r}; valid names: {names}")


def _ops(
    recipe: _Recipe,
    channels: int,
    tail: str,
    mean: tuple[float, ...] | None,
    std: tuple[float, ...] | None,
) -> list[Operation]:
    res = recipe.resolution
    ops: list[Operation] = [RandomResizedCropRGBImageDecoder((res, res), scale=recipe.scale)]
    if channels == 1:
        ops.append(ToGreyChannel())
    ops.append(RandomHorizontalFlip(0.5))
    if recipe.jitter_p > 0 and any(recipe.jitter):
        ops.append(ColorJitter(*recipe.jitter, p=recipe.jitter_p))
    if recipe.grey_p > 0 and channels == 3:
        ops.append(RandomGrayscale(recipe.grey_p))
    if recipe.blur_p > 0:
        ops.append(GaussianBlur(recipe.blur_p, 0.1, 2.0, blur_kernel_size(res)))
    if recipe.solarize_p > 0:
        ops.append(Solarization(recipe.solarize_p, threshold=128))
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
    return [r.resolution for r in _recipes(preset, resolution, n_views, local_resolution)]


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
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels} (convert to L or RGB)")
    if resolution < 8:
        raise ValueError(f"data.resolution must be >= 8 px, got {resolution}")
    if n_views < 2:
        raise ValueError(f"n_views must be >= 2 for contrastive views, got {n_views} (try 2)")
    if tail not in ("float", "uint8", "none"):
        raise ValueError(f"tail must be 'float', 'uint8' or 'none', got {tail!r}")
    if preset == "auto":
        preset = auto_preset(resolution, channels)
    recipes = _recipes(preset, resolution, n_views, local_resolution)
    return [_ops(r, channels, tail, mean, std) for r in recipes]
