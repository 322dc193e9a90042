"""Numba kernels for per-image colour and blur augmentations on uint8 HWC images.

Each `_name_` kernel works in place on ONE C-contiguous image `H x W x C` (C = 1 or 3) with
fixed parameters, so the FFCV ops in `ffcv_ops.py` can call it per image inside their
compiled loop (FFCV's buffers are contiguous per image). The loops run over the flattened
image so LLVM vectorises them: 2-5x faster than `img[y, x, k]` loops on this machine.
The Gaussian blur kernel lives in `aug_blur.py`. `aug_functional.py` wraps them as `adjust_hue(img, factor)`, ... returning new arrays, to
compare with `torchvision.transforms.v2.functional` on the same parameters.

The arithmetic follows torchvision 0.29's uint8 tensor path step by step, in float32:
- brightness: `trunc(clamp(x * f))` (a blend with zeros),
- contrast: blend with the mean of the floored greyscale image,
- saturation: blend with the floored greyscale image (no-op for C = 1),
- hue: RGB -> HSV (Pillow's formulas), shift h, HSV -> RGB, `trunc(x * 255.999)`
  (no-op for C = 1),
- greyscale: `trunc(0.2989 R + 0.587 G + 0.114 B)` copied to every channel,
- blur: Gaussian kernel `exp(-d^2 / (2 sigma^2))`, reflect padding, rounded half to even.
torch's `add(x, y, alpha=a)` rounds `x + a * y` once (FMA); `_fma32` does the same. On the
tests' images the outputs are identical to torchvision's. What could still differ on another
CPU is float32 summation order (torch's 2-D blur vs our separable taps, scalar vs FMA tails),
which can move a value across an integer boundary: one grey level, rarely.
"""

import numpy as np
from numba import njit

_WR, _WG, _WB = np.float32(0.2989), np.float32(0.587), np.float32(0.114)

# numpy error model: float division by zero gives inf instead of a Python exception check,
# which lets LLVM vectorise the pixel loops. No fastmath: it would reorder float32 steps and
# break the bit-for-bit agreement with torchvision. cache=True keeps the machine code in
# __pycache__, so later processes (tests, Ray workers) skip most of the first-epoch compile.
_kernel = njit(nogil=True, error_model="numpy", cache=True)


@_kernel
def _fma32(a: np.float32, b: np.float32, c: np.float32) -> np.float32:
    """float32 a * b + c with one rounding, as torch's vectorised `add(x, y, alpha)` (the
    float64 product of two float32 values is exact)."""
    return np.float32(np.float64(a) * np.float64(b) + np.float64(c))


@_kernel
def _blend_scalar_(img: np.ndarray, other: np.float32, factor: float) -> None:
    """img <- trunc(clamp(factor * img + (1 - factor) * other, 0, 255)); img: H x W x C uint8."""
    flat = img.reshape(-1)  # H*W*C
    ratio = np.float32(factor)
    keep = np.float32(1.0 - factor)  # torch computes alpha = 1 - ratio in float64, then casts
    for j in range(flat.size):
        v = _fma32(other, keep, np.float32(flat[j]) * ratio)
        flat[j] = np.uint8(min(max(v, np.float32(0.0)), np.float32(255.0)))


@_kernel
def _grey_value(r: np.uint8, g: np.uint8, b: np.uint8) -> np.float32:
    """torchvision's ITU-R 601 luma, in float32 and not yet rounded."""
    return _fma32(np.float32(b), _WB, _fma32(np.float32(g), _WG, np.float32(r) * _WR))


@_kernel
def _brightness_(img: np.ndarray, factor: float) -> None:
    """Blend with black: img * factor (H x W x C uint8, in place)."""
    _blend_scalar_(img, np.float32(0.0), factor)


@_kernel
def _grey_floor(flat: np.ndarray) -> np.ndarray:
    """floor(luma) per pixel of a flat RGB image (H*W*3,) -> (H*W,) float32, as torchvision's
    greyscale for contrast and saturation on uint8 images."""
    grey = np.empty(flat.size // 3, dtype=np.float32)
    for j in range(grey.size):
        grey[j] = np.floor(_grey_value(flat[3 * j], flat[3 * j + 1], flat[3 * j + 2]))
    return grey


@_kernel
def _contrast_(img: np.ndarray, factor: float) -> None:
    """Blend with the mean of the floored greyscale image (H x W x C uint8, in place)."""
    h, w, c = img.shape
    flat = img.reshape(-1)
    total = 0  # the floored grey values are integers: an exact integer sum
    if c == 3:
        grey = _grey_floor(flat)
        for j in range(grey.size):
            total += np.int64(grey[j])
    else:
        for j in range(flat.size):
            total += np.int64(flat[j])
    _blend_scalar_(img, np.float32(total / (h * w)), factor)


@_kernel
def _saturation_(img: np.ndarray, factor: float) -> None:
    """Blend each pixel with its floored grey value; no-op for C = 1 (as torchvision)."""
    if img.shape[2] == 1:
        return
    flat = img.reshape(-1)  # H*W*3
    grey = _grey_floor(flat)  # H*W
    ratio = np.float32(factor)
    keep = np.float32(1.0 - factor)  # torch computes alpha = 1 - ratio in float64, then casts
    for j in range(grey.size):
        for k in range(3):
            v = _fma32(grey[j], keep, np.float32(flat[3 * j + k]) * ratio)
            flat[3 * j + k] = np.uint8(min(max(v, np.float32(0.0)), np.float32(255.0)))


@_kernel
def _hue_planar_(red: np.ndarray, green: np.ndarray, blue: np.ndarray, shift: np.float32) -> None:
    """Rotate the hue of N float32 pixels in [0, 1] (three planes of shape N, in place).

    Every float32 step mirrors torchvision's `_rgb_to_hsv` / `_hsv_to_rgb`, true divisions
    included. Selects instead of branches, `&` instead of `and`, and unit-stride planes let
    LLVM vectorise the loop (about 6x faster than a per-pixel HWC loop here).
    """
    one, zero = np.float32(1.0), np.float32(0.0)
    for j in range(red.shape[0]):
        r, g, b = red[j], green[j], blue[j]
        max_rg = r if r > g else g
        maxc = max_rg if max_rg > b else b
        min_rg = r if r < g else g
        minc = min_rg if min_rg < b else b
        eqc = maxc == minc
        crange = maxc - minc
        s = crange / (one if eqc else maxc)
        div = one if eqc else crange
        rc, gc, bc = (maxc - r) / div, (maxc - g) / div, (maxc - b) / div
        is_r = maxc == r
        is_g = (maxc == g) & ~is_r
        is_b = ~is_r & (maxc != g)
        hr = (bc - gc) if is_r else zero
        hg = ((rc + np.float32(2.0)) - bc) if is_g else zero
        hb = ((gc + np.float32(4.0)) - rc) if is_b else zero
        # torch: fmod(h / 6 + 1, 1), then remainder(h + shift, 1). Both arguments lie in
        # [-0.5, 2), where adding or subtracting 1 gives the same float32 as fmodf (exact by
        # Sterbenz's lemma) and avoids a libm call per pixel.
        h = (hr + hg + hb) * np.float32(1.0 / 6.0) + one
        h = (h - one) if h >= one else h
        h = h + shift
        h = (h - one) if h >= one else ((h + one) if h < zero else h)
        h6 = h * np.float32(6.0)
        i6 = np.floor(h6)
        f = h6 - i6
        i = np.int32(i6)  # 0..5 (6 only if h rounds to 1; torch's remainder maps it to 0)
        sxf = s * f
        one_minus_s = one - s
        v = maxc
        q = (one - sxf) * v
        q = zero if q < zero else (one if q > one else q)
        t = (sxf + one_minus_s) * v
        t = zero if t < zero else (one if t > one else t)
        p = one_minus_s * v
        p = zero if p < zero else (one if p > one else p)
        red[j] = v if ((i == 0) | (i >= 5)) else (q if i == 1 else (t if i == 4 else p))
        green[j] = t if ((i == 0) | (i == 6)) else (v if i <= 2 else (q if i == 3 else p))
        blue[j] = p if ((i <= 1) | (i == 6)) else (t if i == 2 else (q if i == 5 else v))


@_kernel
def _hue_(img: np.ndarray, factor: float) -> None:
    """Shift hue by `factor` in [-0.5, 0.5] turns (H x W x 3 uint8, in place); C = 1: no-op."""
    h, w, c = img.shape
    if c == 1:
        return
    flat = img.reshape(-1)  # H*W*3
    planes = np.empty((3, h * w), dtype=np.float32)  # 3 x (H*W), values in [0, 1]
    inv255 = np.float32(1.0 / 255.0)  # torchvision: to float32, then multiply by 1/255
    for j in range(h * w):
        for k in range(3):
            planes[k, j] = np.float32(flat[3 * j + k]) * inv255
    _hue_planar_(planes[0], planes[1], planes[2], np.float32(factor))
    scale = np.float32(255.999)  # torchvision's float -> uint8: x * (255 + 1 - 1e-3), truncated
    for j in range(h * w):
        for k in range(3):
            flat[3 * j + k] = np.uint8(planes[k, j] * scale)


@_kernel
def _jitter_(
    img: np.ndarray,
    keys: np.ndarray,
    brightness: float,
    contrast: float,
    saturation: float,
    hue: float,
    enabled: np.ndarray,
) -> None:
    """Brightness, contrast, saturation, hue (H x W x C uint8, in place) with these factors,
    in the order that sorts `keys` (4,): torchvision's ColorJitter draws a random permutation.

    enabled: (4,) bool in that order; False skips a part (strength 0).
    The 4-key insertion sort replaces np.argsort, which costs seconds of numba compile.
    """
    order = np.arange(4)
    for a in range(1, 4):
        b = a
        while b > 0 and keys[order[b - 1]] > keys[order[b]]:
            order[b - 1], order[b] = order[b], order[b - 1]
            b -= 1
    for k in order:
        if not enabled[k]:
            continue
        if k == 0:
            _brightness_(img, brightness)
        elif k == 1:
            _contrast_(img, contrast)
        elif k == 2:
            _saturation_(img, saturation)
        else:
            _hue_(img, hue)


@_kernel
def _luma_rounded_(src: np.ndarray, dst: np.ndarray) -> None:
    """dst (H x W x 1) <- round(luma of src (H x W x 3)), clipped to 255."""
    rgb, grey = src.reshape(-1), dst.reshape(-1)
    for j in range(grey.size):
        v = np.rint(_grey_value(rgb[3 * j], rgb[3 * j + 1], rgb[3 * j + 2]))
        grey[j] = np.uint8(min(v, np.float32(255.0)))


@_kernel
def _to_chw_float_(src: np.ndarray, dst: np.ndarray, table: np.ndarray) -> None:
    """dst (C x H x W float32) <- table[src value, channel] for src (H x W x C uint8).

    table: 256 x C float32, the normalised value of each byte per channel. Writing CHW here
    saves the separate permute-and-copy of ToTorchImage(channels_last=False).
    """
    h, w, c = src.shape
    hw = h * w
    flat, out = src.reshape(-1), dst.reshape(-1)
    for k in range(c):
        for j in range(hw):
            out[k * hw + j] = table[flat[j * c + k], k]


@_kernel
def _grayscale_(img: np.ndarray) -> None:
    """Replace every channel by trunc(luma); C = 1 is left unchanged."""
    if img.shape[2] == 1:
        return
    flat = img.reshape(-1)
    for j in range(flat.size // 3):
        grey = np.uint8(_grey_value(flat[3 * j], flat[3 * j + 1], flat[3 * j + 2]))
        flat[3 * j] = grey
        flat[3 * j + 1] = grey
        flat[3 * j + 2] = grey


@_kernel
def _solarize_(img: np.ndarray, threshold: int) -> None:
    """Invert (255 - x) every value >= threshold (H x W x C uint8, in place)."""
    flat = img.reshape(-1)
    for j in range(flat.size):
        if flat[j] >= threshold:
            flat[j] = 255 - flat[j]
