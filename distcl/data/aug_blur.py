"""Numba kernel for the per-image Gaussian blur on uint8 HWC images (SimCLR App. A).

Separable, reflect borders, float32 taps summed in order, as torchvision's `gaussian_blur`
(to within one grey level: torch sums the 2-D taps in another order). Compiled with the same
options as the colour kernels in `aug_kernels.py` (`_kernel`), and called per image from
`ffcv_ops.GaussianBlur` and `aug_functional.gaussian_blur`.
"""

import numpy as np

from distcl.data.aug_kernels import _kernel


@_kernel
def _reflect(j: int, n: int) -> int:
    """Index into 0..n-1 mirrored without repeating the edge (torch 'reflect' padding)."""
    if n == 1:
        return 0
    period = 2 * (n - 1)
    j = abs(j) % period
    return period - j if j >= n else j


@_kernel
def _gaussian_kernel(sigma: float, ksize: int) -> np.ndarray:
    """1-D Gaussian weights (ksize,) float32 summing to 1, as torchvision's softmax form."""
    half = (ksize - 1) / 2.0
    weights = np.empty(ksize, dtype=np.float64)
    for j in range(ksize):
        d = (j - half) / sigma
        weights[j] = np.exp(-0.5 * d * d)
    return (weights / weights.sum()).astype(np.float32)


@_kernel
def _blur_(img: np.ndarray, sigma: float, ksize: int) -> None:
    """Separable Gaussian blur (H x W x C uint8, in place) with reflect borders.

    Rows are flattened to W*C floats so the tap loops run over contiguous memory and
    vectorise; each output still sums its taps in order 0..ksize-1, as a direct loop would.
    Border columns come from a precomputed reflect table (no modulo per pixel).
    """
    h, w, c = img.shape
    kernel = _gaussian_kernel(sigma, ksize)
    radius = ksize // 2
    wc, pc = w * c, radius * c
    flat = img.reshape(-1)
    edge = np.empty(2 * radius, dtype=np.int64)  # source column offset of each padding column
    for t in range(radius):
        edge[t] = _reflect(t - radius, w) * c
        edge[radius + t] = _reflect(w + t, w) * c
    padded = np.empty(wc + 2 * pc, dtype=np.float32)  # one reflect-padded row
    rows = np.empty((h, wc), dtype=np.float32)  # horizontal pass: H x (W*C)
    for y in range(h):
        row = flat[y * wc : (y + 1) * wc]
        for j in range(wc):
            padded[pc + j] = np.float32(row[j])
        for t in range(radius):
            for k in range(c):
                padded[t * c + k] = np.float32(row[edge[t] + k])
                padded[pc + wc + t * c + k] = np.float32(row[edge[radius + t] + k])
        out = rows[y]
        out[:] = 0.0
        for t in range(ksize):
            kt, src = kernel[t], padded[t * c : t * c + wc]
            for j in range(wc):
                out[j] += kt * src[j]
    acc = np.empty(wc, dtype=np.float32)  # vertical pass, one output row at a time
    lo, hi = np.float32(0.0), np.float32(255.0)
    for y in range(h):
        acc[:] = 0.0
        for t in range(ksize):
            kt, src = kernel[t], rows[_reflect(y + t - radius, h)]
            for j in range(wc):
                acc[j] += kt * src[j]
        dst = flat[y * wc : (y + 1) * wc]
        for j in range(wc):
            dst[j] = np.uint8(min(max(np.rint(acc[j]), lo), hi))  # torch: round half to even
