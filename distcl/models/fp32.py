"""Full-precision regions for the methods' losses under bf16 autocast.

Casting inputs with `.float()` is not enough: autocast runs matmuls in bf16 whatever the input
dtype, and bf16 keeps ~3 significant digits, i.e. a 0.02 error on a cosine logit at T = 0.2,
and a coarse Barlow Twins cross-correlation. Inside `fp32(x)` autocast is off.
"""

from __future__ import annotations

import torch
from torch import Tensor


def fp32(like: Tensor) -> torch.autocast:
    """`with fp32(z):` disables autocast on `z`'s device type for the block."""
    return torch.autocast(like.device.type, enabled=False)
