"""FFCV 1.0.2 operations for SimCLR-style augmentation with PER-IMAGE random draws.

Stock FFCV lacks hue jitter, greyscale, Gaussian blur and solarization, and wrapping
torchvision in `ModuleWrapper` draws one decision per batch, which makes every image of a
batch share one augmentation (wrong for SimCLR, Chen et al. 2020, Appendix A). These ops run
inside FFCV's compiled (numba) stage: each draws its random numbers for the whole batch up
front, one per image, then loops over images with `Compiler.get_iterator()` (prange when the
loader has several workers) and calls the in-place kernels of `aug_kernels.py`.

They take uint8 images `B x H x W x C` (C = 1 or 3, C-contiguous per image, as every FFCV
buffer is) after the decoder and before ToTensor, and modify that buffer in place (as FFCV's
own RandomBrightness does), so they declare no new memory. `ToGreyChannel` (RGB -> 1
channel) and `NormalizeToFloat` (-> float32 `B x C x H x W`) change shape/dtype and do.

Randomness comes from numba's own generator (per thread, seeded from OS entropy, reseeded
in forked processes), not numpy's global one: `np.random.seed` does not make these draws
repeatable, and ranks draw independently.
"""

from collections.abc import Callable
from dataclasses import replace

import numpy as np
from ffcv.pipeline.allocation_query import AllocationQuery
from ffcv.pipeline.compiler import Compiler
from ffcv.pipeline.operation import Operation
from ffcv.pipeline.state import State

from distcl.data.aug_blur import _blur_
from distcl.data.aug_kernels import (
    _grayscale_,
    _jitter_,
    _luma_rounded_,
    _solarize_,
    _to_chw_float_,
)


def _check_p(name: str, p: float) -> float:
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{name}.p must be a probability in [0, 1], got {p}")
    return float(p)


def _in_place_state(self: Operation, previous_state: State) -> tuple[State, None]:
    """`declare_state_and_memory` of an op that writes into its input: same shape and dtype,
    compiled stage, no new buffer."""
    return replace(previous_state, jit_mode=True), None


def _parallel(kernel: Callable) -> Callable:
    """Mark a per-batch kernel whose loop over images FFCV may run in parallel."""
    kernel.is_parallel = True
    return kernel


class ColorJitter(Operation):
    """With probability p per image, jitter brightness, contrast, saturation and hue in a
    random order per image, as torchvision's ColorJitter inside RandomApply (SimCLR).

    brightness, contrast, saturation: strength s >= 0; the factor is drawn uniformly from
        [max(0, 1 - s), 1 + s]; 0 disables that part.
    hue: strength in [0, 0.5]; the shift is drawn uniformly from [-hue, hue] turns.
    p: probability that an image is jittered at all.
    For C = 1 images saturation and hue are no-ops (as torchvision).
    """

    def __init__(
        self,
        brightness: float = 0.0,
        contrast: float = 0.0,
        saturation: float = 0.0,
        hue: float = 0.0,
        p: float = 0.8,
    ):
        super().__init__()
        for name, value in (
            ("brightness", brightness),
            ("contrast", contrast),
            ("saturation", saturation),
        ):
            if value < 0:
                raise ValueError(f"ColorJitter.{name} must be >= 0, got {value} (SimCLR: 0.8)")
        if not 0.0 <= hue <= 0.5:
            raise ValueError(f"ColorJitter.hue must be in [0, 0.5], got {hue} (SimCLR: 0.2)")
        self.strengths = (float(brightness), float(contrast), float(saturation), float(hue))
        self.p = _check_p("ColorJitter", p)

    def generate_code(self) -> Callable:
        my_range = Compiler.get_iterator()
        p = self.p
        b_s, c_s, s_s, h_s = self.strengths

        def color_jitter(images, *_):
            n = images.shape[0]  # images: B x H x W x C uint8
            apply = np.random.rand(n) < p  # B
            bright = np.random.uniform(max(0.0, 1.0 - b_s), 1.0 + b_s, n)  # B
            contr = np.random.uniform(max(0.0, 1.0 - c_s), 1.0 + c_s, n)  # B
            satur = np.random.uniform(max(0.0, 1.0 - s_s), 1.0 + s_s, n)  # B
            hue = np.random.uniform(-h_s, h_s, n)  # B
            order_keys = np.random.rand(n, 4)  # B x 4; sorting iid keys = uniform permutation
            enabled = np.array([b_s > 0, c_s > 0, s_s > 0, h_s > 0])
            for i in my_range(n):
                if apply[i]:
                    _jitter_(
                        images[i], order_keys[i], bright[i], contr[i], satur[i], hue[i], enabled
                    )
            return images

        return _parallel(color_jitter)

    declare_state_and_memory = _in_place_state


class RandomGrayscale(Operation):
    """With probability p per image, replace every channel by the ITU-R 601 grey value
    (torchvision weights 0.2989, 0.587, 0.114); the image keeps its C channels."""

    def __init__(self, p: float = 0.2):
        super().__init__()
        self.p = _check_p("RandomGrayscale", p)

    def generate_code(self) -> Callable:
        my_range = Compiler.get_iterator()
        p = self.p

        def grayscale(images, *_):
            apply = np.random.rand(images.shape[0]) < p  # B
            for i in my_range(images.shape[0]):
                if apply[i]:
                    _grayscale_(images[i])
            return images

        return _parallel(grayscale)

    declare_state_and_memory = _in_place_state


class GaussianBlur(Operation):
    """With probability p per image, blur with a Gaussian of sigma ~ U[sigma_min, sigma_max]
    (one sigma per image), separable `kernel_size` taps, reflect borders (as torchvision).

    SimCLR (Chen et al. 2020, App. A): p = 0.5, sigma in [0.1, 2.0], kernel 10% of the side.
    """

    def __init__(
        self, p: float = 0.5, sigma_min: float = 0.1, sigma_max: float = 2.0, kernel_size: int = 23
    ):
        super().__init__()
        self.p = _check_p("GaussianBlur", p)
        if not 0 < sigma_min <= sigma_max:
            raise ValueError(
                f"GaussianBlur needs 0 < sigma_min <= sigma_max, got {sigma_min}, {sigma_max} "
                "(SimCLR: 0.1, 2.0)"
            )
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(
                f"GaussianBlur.kernel_size must be a positive odd integer, got {kernel_size} "
                f"(try {kernel_size | 1})"
            )
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)
        self.kernel_size = int(kernel_size)

    def generate_code(self) -> Callable:
        my_range = Compiler.get_iterator()
        p, lo, hi, ksize = self.p, self.sigma_min, self.sigma_max, self.kernel_size

        def blur(images, *_):
            n = images.shape[0]
            apply = np.random.rand(n) < p  # B
            sigma = np.random.uniform(lo, hi, n)  # B
            for i in my_range(n):
                if apply[i]:
                    _blur_(images[i], sigma[i], ksize)
            return images

        return _parallel(blur)

    declare_state_and_memory = _in_place_state


class Solarization(Operation):
    """With probability p per image, invert (255 - x) every value >= threshold.

    BYOL (Grill et al. 2020, Table 6): p = 0.0 for the first view, 0.2 for the second.
    """

    def __init__(self, p: float = 0.2, threshold: int = 128):
        super().__init__()
        self.p = _check_p("Solarization", p)
        if not 0 <= threshold <= 256:
            raise ValueError(f"Solarization.threshold must be in [0, 256], got {threshold}")
        self.threshold = int(threshold)

    def generate_code(self) -> Callable:
        my_range = Compiler.get_iterator()
        p, threshold = self.p, self.threshold

        def solarize(images, *_):
            apply = np.random.rand(images.shape[0]) < p  # B
            for i in my_range(images.shape[0]):
                if apply[i]:
                    _solarize_(images[i], threshold)
            return images

        return _parallel(solarize)

    declare_state_and_memory = _in_place_state


class ToGreyChannel(Operation):
    """`B x H x W x 3` -> `B x H x W x 1`: round(luma). FFCV stores every image as RGB, so a
    grey dataset is stored with three equal channels; rounding (not truncating) the luma
    returns exactly that value (the weights sum to 0.9999)."""

    def generate_code(self) -> Callable:
        my_range = Compiler.get_iterator()

        def to_grey(images, dst):
            for i in my_range(images.shape[0]):
                _luma_rounded_(images[i], dst[i])
            return dst

        return _parallel(to_grey)

    def declare_state_and_memory(self, previous_state: State) -> tuple[State, AllocationQuery]:
        h, w, c = previous_state.shape
        if c != 3:
            raise ValueError(f"ToGreyChannel expects 3 input channels, got {c}; drop the op")
        shape = (h, w, 1)
        return (
            replace(previous_state, jit_mode=True, shape=shape),
            AllocationQuery(shape, np.dtype("uint8")),
        )


class NormalizeToFloat(Operation):
    """uint8 `B x H x W x C` -> float32 `B x C x H x W`: `(x / 255 - mean) / std`, compiled.

    Follow it with `ToTensor()` only: it writes the torch image layout itself (one pass,
    instead of FFCV's NormalizeImage, which is 3-channel only on CPU, plus ToTorchImage's
    copy). mean, std: per channel in [0, 1] units (length C); None gives plain x / 255.
    """

    def __init__(self, mean: tuple[float, ...] | None = None, std: tuple[float, ...] | None = None):
        super().__init__()
        self.mean, self.std = mean, std

    def generate_code(self) -> Callable:
        my_range = Compiler.get_iterator()
        table = self.table  # 256 x C float32 lookup: byte -> normalised value per channel

        def normalize(images, dst):
            for i in my_range(images.shape[0]):
                _to_chw_float_(images[i], dst[i], table)  # H x W x C -> C x H x W
            return dst

        return _parallel(normalize)

    def declare_state_and_memory(self, previous_state: State) -> tuple[State, AllocationQuery]:
        h, w, c = previous_state.shape
        mean = np.zeros(c) if self.mean is None else np.asarray(self.mean, dtype=np.float64)
        std = np.ones(c) if self.std is None else np.asarray(self.std, dtype=np.float64)
        if mean.shape != (c,) or std.shape != (c,) or np.any(std <= 0):
            raise ValueError(
                f"NormalizeToFloat needs {c} means and {c} positive stds for {c}-channel images, "
                f"got mean={self.mean}, std={self.std}"
            )
        self.table = ((np.arange(256)[:, None] / 255.0 - mean) / std).astype(np.float32)
        dtype = np.dtype("float32")
        state = replace(previous_state, jit_mode=True, dtype=dtype, shape=(c, h, w))
        return state, AllocationQuery((c, h, w), dtype)
