"""Fixed-parameter augmentations on one uint8 `H x W x C` numpy image (C = 1 or 3).

The same numba kernels the FFCV ops in `ffcv_ops.py` run per image, with the parameters
given instead of drawn, each returning a new array. They mirror
`torchvision.transforms.v2.functional` on uint8 tensors (to within one grey level; see
`aug_kernels.py`), so tests can check the ops against torchvision on the same parameters.
"""

import numpy as np

from distcl.data.aug_blur import _blur_
from distcl.data.aug_kernels import (
    _brightness_,
    _contrast_,
    _grayscale_,
    _hue_,
    _saturation_,
    _solarize_,
)


def _checked_copy(img: np.ndarray) -> np.ndarray:
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] not in (1, 3):
        raise ValueError(
            f"image must be uint8 H x W x C with C in (1, 3), got {img.dtype} {img.shape}; "
            "convert with img.astype(np.uint8) and add a channel axis"
        )
    return np.ascontiguousarray(img).copy()


def adjust_brightness(img: np.ndarray, factor: float) -> np.ndarray:
    """torchvision `adjust_brightness` on an `H x W x C` uint8 image; returns a new array."""
    out = _checked_copy(img)
    _brightness_(out, float(factor))
    return out


def adjust_contrast(img: np.ndarray, factor: float) -> np.ndarray:
    """torchvision `adjust_contrast` on an `H x W x C` uint8 image; returns a new array."""
    out = _checked_copy(img)
    _contrast_(out, float(factor))
    return out


def adjust_saturation(img: np.ndarray, factor: float) -> np.ndarray:
    """torchvision `adjust_saturation` on an `H x W x C` uint8 image; returns a new array."""
    out = _checked_copy(img)
    _saturation_(out, float(factor))
    return out


def adjust_hue(img: np.ndarray, factor: float) -> np.ndarray:
    """torchvision `adjust_hue` (factor in [-0.5, 0.5]) on `H x W x C` uint8; new array."""
    if not -0.5 <= factor <= 0.5:
        raise ValueError(f"hue factor must be in [-0.5, 0.5], got {factor}")
    out = _checked_copy(img)
    _hue_(out, float(factor))
    return out


def to_grayscale(img: np.ndarray) -> np.ndarray:
    """torchvision `rgb_to_grayscale(num_output_channels=C)`: C channels, all the grey value."""
    out = _checked_copy(img)
    _grayscale_(out)
    return out


def solarize(img: np.ndarray, threshold: int = 128) -> np.ndarray:
    """torchvision `solarize`: 255 - x wherever x >= threshold; returns a new array."""
    out = _checked_copy(img)
    _solarize_(out, int(threshold))
    return out


def gaussian_blur(img: np.ndarray, sigma: float, ksize: int) -> np.ndarray:
    """torchvision `gaussian_blur(kernel_size=[ksize]*2, sigma=[sigma]*2)`; returns a new array."""
    if ksize < 1 or ksize % 2 == 0:
        raise ValueError(f"ksize must be a positive odd integer, got {ksize} (try {ksize | 1})")
    if sigma <= 0:
        raise ValueError(f"sigma must be > 0, got {sigma} (SimCLR draws from 0.1 to 2.0)")
    out = _checked_copy(img)
    _blur_(out, float(sigma), int(ksize))
    return out
