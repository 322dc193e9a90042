"""View-augmentation recipes: what each preset does to each view, with no FFCV import.

`distcl.data.views` turns a recipe into FFCV ops (compiled, per image); the torchvision
fallback (`distcl.data.torch_views`) applies the same recipe with torchvision functions, so
both loaders draw the same augmentations with the same parameters.

Presets (names in PRESETS):
- simclr: Chen et al. 2020, App. A: crop 0.08-1, flip, jitter (0.8s, 0.8s, 0.8s, 0.2s) p=0.8,
  greyscale p=0.2, blur p=0.5 (sigma 0.1-2, kernel 10% of the side) only at >= 96 px.
  s = 0.5 at <= 64 px (their CIFAR-10 setting, App. B.9), else 1.0.
- simclr_grey (GreyRecipe): crop 0.2-1, flip, then brightness and contrast 0.4, each with
  p=0.8 on its own (FFCV's RandomBrightness, RandomContrast): distcl's calibrated CPU recipe
  for 1-channel images (DESIGN.md "Measured speed": 86.8% linear probe on Fashion-MNIST after
  4 CPU-minutes). "auto" picks it for 1-channel data.
- byol: Grill et al. 2020, Table 6: crop 0.08-1, flip, jitter (0.4, 0.4, 0.2, 0.1) p=0.8,
  greyscale 0.2; blur p=1.0 / 0.1 and solarize p=0.0 / 0.2 on views 1 / 2 (odd / even).
- multicrop: Caron et al. 2020 (SwAV): views 0-1 global (scale 0.14-1, `resolution`), the
  rest local (scale 0.05-0.14, `local_resolution`, default resolution * 96 / 224 as SwAV's
  224/96); colour as simclr at the global resolution.

`view_recipes(spec, channels, n_views)` is what both loaders read: the preset's recipes with the
config's `data.crop_scale_min`, `data.jitter` and `data.jitter_p` applied (`ViewSpec`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

PRESETS: dict[str, str] = {
    "simclr": "Chen et al. 2020 (SimCLR), Appendix A",
    "simclr_grey": "distcl calibrated 1-channel recipe (DESIGN.md, Measured speed)",
    "byol": "Grill et al. 2020 (BYOL), Table 6",
    "multicrop": "Caron et al. 2020 (SwAV), multi-crop",
}
SMALL_IMAGE_PX = 64  # <= this: CIFAR-size, SimCLR jitter strength 0.5 (App. B.9)
BLUR_MIN_PX = 96  # >= this: Gaussian blur on (SimCLR drops it for CIFAR, App. B.9)
BLUR_SIGMA = (0.1, 2.0)  # Gaussian blur sigma range (SimCLR App. A)
SOLARIZE_THRESHOLD = 128  # pixels >= this are inverted (BYOL Table 6)


GREY_DEFAULTS = (0.2, 0.4, 0.8)  # simclr_grey: crop scale min, jitter, jitter_p (DESIGN.md)


@dataclass(frozen=True)
class ViewSpec:
    """The config's view settings; None keeps the preset's own value.

    crop_scale_min: RandomResizedCrop lower scale of every full-range crop (multicrop's local
    crops keep 0.05-0.14). jitter: brightness strength; the preset's contrast, saturation and
    hue strengths scale with it (SimCLR at 32 px: 0.4 -> (0.4, 0.4, 0.4, 0.1)); 0 turns colour
    jitter off. jitter_p: probability of colour jitter per image (grey: of each of brightness
    and contrast).
    """

    resolution: int  # output side in pixels (multicrop: of the global views)
    crop_scale_min: float | None = None
    jitter: float | None = None
    jitter_p: float | None = None
    preset: str = "auto"  # a PRESETS name; auto = by channels (auto_preset)


@dataclass(frozen=True)
class GreyRecipe:
    """distcl's calibrated 1-channel view (simclr_grey): crop, flip, brightness, contrast."""

    resolution: int  # output side in pixels
    scale: tuple[float, float]  # RandomResizedCrop area fraction range
    jitter: float  # brightness and contrast factor range 1 +- jitter
    p: float  # probability of brightness, and separately of contrast, per image


@dataclass(frozen=True)
class Recipe:
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


def _simclr_recipe(resolution: int, scale: tuple[float, float], at_px: int) -> Recipe:
    s = 0.5 if at_px <= SMALL_IMAGE_PX else 1.0
    return Recipe(
        resolution,
        scale,
        jitter=(0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s),
        grey_p=0.2,
        blur_p=0.5 if at_px >= BLUR_MIN_PX else 0.0,
    )


def recipes(
    preset: str, resolution: int, n_views: int, local_resolution: int | None = None
) -> list[Recipe | GreyRecipe]:
    """One recipe per view for a named preset (not "auto": resolve it with auto_preset)."""
    if preset == "simclr":
        return [_simclr_recipe(resolution, (0.08, 1.0), resolution)] * n_views
    if preset == "simclr_grey":
        scale_min, jitter, p = GREY_DEFAULTS
        return [GreyRecipe(resolution, (scale_min, 1.0), jitter, p)] * n_views
    if preset == "byol":
        byol = dict(jitter=(0.4, 0.4, 0.2, 0.1), grey_p=0.2)
        pair = [
            Recipe(resolution, (0.08, 1.0), blur_p=1.0, solarize_p=0.0, **byol),
            Recipe(resolution, (0.08, 1.0), blur_p=0.1, solarize_p=0.2, **byol),
        ]
        return [pair[v % 2] for v in range(n_views)]
    if preset == "multicrop":
        local = local_resolution or max(8, round(resolution * 96 / 224))
        glob = _simclr_recipe(resolution, (0.14, 1.0), resolution)
        loc = _simclr_recipe(local, (0.05, 0.14), resolution)
        return [glob if v < 2 else loc for v in range(n_views)]
    names = ", ".join(["auto", *PRESETS])
    raise ValueError(f"unknown view preset {preset!r}; valid names: {names}")


def check_view_args(resolution: int, channels: int, n_views: int) -> None:
    """The argument checks every loader runs before building its views."""
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels} (convert to L or RGB)")
    if resolution < 8:
        raise ValueError(f"data.resolution must be >= 8 px, got {resolution}")
    if n_views < 2:
        raise ValueError(f"n_views must be >= 2 for contrastive views, got {n_views} (try 2)")


def _apply(recipe: Recipe | GreyRecipe, spec: ViewSpec) -> Recipe | GreyRecipe:
    """`recipe` with the spec's non-None settings in place of the preset's own."""
    changes: dict = {}
    if spec.crop_scale_min is not None and recipe.scale[1] == 1.0:  # not multicrop's local
        changes["scale"] = (spec.crop_scale_min, 1.0)
    if isinstance(recipe, GreyRecipe):
        if spec.jitter is not None:
            changes["jitter"] = spec.jitter
        if spec.jitter_p is not None:
            changes["p"] = spec.jitter_p
        return replace(recipe, **changes)
    if spec.jitter is not None and recipe.jitter[0] > 0:
        changes["jitter"] = tuple(x * spec.jitter / recipe.jitter[0] for x in recipe.jitter)
    if spec.jitter_p is not None:
        changes["jitter_p"] = spec.jitter_p
    return replace(recipe, **changes)


def view_recipes(spec: ViewSpec, channels: int, n_views: int) -> list[Recipe | GreyRecipe]:
    """Per view, the recipe both loaders (FFCV and torchvision) apply for `spec`."""
    check_view_args(spec.resolution, channels, n_views)
    preset = auto_preset(spec.resolution, channels) if spec.preset == "auto" else spec.preset
    return [_apply(r, spec) for r in recipes(preset, spec.resolution, n_views)]


def config_view_spec(data) -> ViewSpec:
    """The ViewSpec of `data` (a config DataConfig): its view keys as given, None where the
    config leaves the preset's own value."""
    return ViewSpec(data.resolution, data.crop_scale_min, data.jitter, data.jitter_p, data.preset)
