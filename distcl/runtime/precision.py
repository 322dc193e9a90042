"""Precision and memory-layout helpers: bf16 autocast, channels_last, SyncBatchNorm.

Each helper is a no-op with ONE logged warning when the machine cannot do what was asked, so a
GPU preset still runs (slower, in fp32) on a laptop. Measured here (DESIGN.md, AMD/Intel CPU with
avx512_bf16/AMX): bf16 autocast plus channels_last took a small CNN from 350 to 3,261 views/s.

Losses stay in fp32: autocast covers the encoder only, and embeddings are cast to float32 before
the loss (:func:`fp32_embeddings`), because the softmax over thousands of negatives at T=0.1 loses
too many bits in bf16 (8-bit mantissa).
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Iterator

import torch
from torch import nn

log = logging.getLogger(__name__)
_warned: set[str] = set()


def _warn_once(key: str, message: str) -> None:
    """Log ``message`` at WARNING level the first time ``key`` is seen in this process."""
    if key not in _warned:
        _warned.add(key)
        log.warning(message)


def _device_type(device: str | torch.device) -> str:
    return torch.device(device).type


def cuda_native_bf16(capability: tuple[int, int]) -> bool:
    """Whether a CUDA GPU of compute `capability` has bf16 tensor cores: Ampere (8.0) and newer.

    `torch.cuda.is_bf16_supported()` also says True on V100 (7.0) and T4 (7.5), where bf16 is
    emulated and slower than fp32, so it is not the test for `train.precision=auto`.
    """
    return capability >= (8, 0)


@functools.cache
def _bf16_supported_cached(device_type: str) -> bool:
    if device_type == "cuda":
        if not torch.cuda.is_available():
            return False
        if torch.version.hip:  # ROCm: torch's check follows the gfx arch (MI200/MI300: native)
            return torch.cuda.is_bf16_supported()
        return cuda_native_bf16(torch.cuda.get_device_capability())
    if device_type != "cpu":
        return False
    # Native bf16 on x86 needs avx512_bf16 or AMX; without them autocast still runs but emulates
    # bf16 and is slower than fp32, so report False. oneDNN's check is the one torch itself uses.
    try:
        native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        caps = getattr(torch._C._cpu, "_get_cpu_capability", dict)()
        native = bool(caps.get("avx512_bf16") or caps.get("amx_bf16"))
    if not native:
        return False
    try:  # the probe: a tiny matmul must really come out in bf16 under autocast
        a = torch.ones(4, 4)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = a @ a
        return out.dtype == torch.bfloat16 and bool(torch.isfinite(out.float()).all())
    except RuntimeError:
        return False


def bf16_supported(device: str | torch.device) -> bool:
    """True when ``device`` runs bf16 autocast natively (cached per device type).

    CUDA: ``torch.cuda.is_bf16_supported()`` (Ampere and newer). CPU: oneDNN reports native bf16
    (avx512_bf16 or AMX) AND a tiny bf16 autocast matmul returns a finite bf16 result.
    """
    return _bf16_supported_cached(_device_type(device))


def autocast(device: str | torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on ``device`` when ``enabled`` and supported, else a no-op context.

    Asking for it where unsupported logs one warning and runs in fp32. Wrap the encoder call only;
    compute the loss outside, on ``fp32_embeddings(z)``.
    """
    if not enabled:
        return contextlib.nullcontext()
    dtype = _device_type(device)
    if not bf16_supported(device):
        _warn_once(
            f"autocast:{dtype}",
            f"train.precision=bf16 but device {dtype!r} has no native bf16; running in fp32 "
            "(set train.precision=fp32 to silence this, or use an Ampere+ GPU / avx512_bf16 CPU)",
        )
        return contextlib.nullcontext()
    return torch.autocast(dtype, dtype=torch.bfloat16)


def fp32_embeddings(z: torch.Tensor) -> torch.Tensor:
    """Cast half/bf16 embeddings (``B x D``) to float32 for the loss; leave fp32/fp64 as they are."""
    return z.float() if z.dtype in (torch.float16, torch.bfloat16) else z


def to_channels_last(model: nn.Module, enabled: bool) -> nn.Module:
    """Convert ``model``'s 4-D weights to channels_last memory format when ``enabled``.

    Only useful for conv nets whose inputs are also channels_last (FFCV's ToTorchImage gives
    that). A model without any 4-D parameter is left as is, with one warning. Returns ``model``.
    """
    if not enabled:
        return model
    if not any(p.ndim == 4 for p in model.parameters()):
        _warn_once(
            "channels_last:no_conv",
            "train.channels_last=true but the model has no 4-D (conv) weights; left as is "
            "(set train.channels_last=false for MLP/transformer encoders)",
        )
        return model
    return model.to(memory_format=torch.channels_last)


def maybe_sync_batchnorm(model: nn.Module, enabled: bool) -> nn.Module:
    """Convert BatchNorm layers to SyncBatchNorm when ``enabled`` and it can work here.

    Requires a process group with world size > 1 AND parameters on a GPU: torch's SyncBatchNorm
    raises ``ValueError`` for CPU inputs (checked on torch 2.14: "SyncBatchNorm expected input tensor
    to be on GPU ..."), so on CPU/gloo it falls back to per-rank BatchNorm with one warning. Call
    after moving the model to its device and before wrapping it in DDP. Returns the (possibly new)
    model. Per-rank BN is what SimCLR calls local BN; it leaks information through batch
    statistics, which SimCLR fixes with global BN (section 2.3), hence this option on GPUs.
    """
    if not enabled:
        return model
    from distcl.runtime import dist  # late: dist is the only module that imports torch.distributed

    if not dist.is_dist() or dist.get_world_size() <= 1:
        _warn_once(
            "syncbn:no_group",
            "train.sync_bn=true but there is no process group with world size > 1; keeping "
            "BatchNorm (SyncBatchNorm only matters with several ranks)",
        )
        return model
    param = next(model.parameters(), None)
    device_type = param.device.type if param is not None else "cpu"
    if device_type not in ("cuda", "xpu", "hpu"):
        _warn_once(
            "syncbn:cpu",
            f"train.sync_bn=true but parameters are on {device_type!r}; torch's SyncBatchNorm "
            "supports only GPU inputs (it raises on CPU/gloo), so each rank keeps local "
            "BatchNorm statistics (set train.sync_bn=false on CPU, or move the model first)",
        )
        return model
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


@contextlib.contextmanager
def no_warnings_seen() -> Iterator[None]:
    """Forget which warnings were logged, for the duration of the block (tests use this)."""
    saved = set(_warned)
    _warned.clear()
    try:
        yield
    finally:
        _warned.clear()
        _warned.update(saved)


def resolve_precision(precision: str, device: str | torch.device) -> str:
    """What a run with `train.precision=precision` computes in on `device`: "bf16" or "fp32".

    auto: bf16 where the hardware has it natively (Ampere+ GPUs, avx512_bf16/AMX CPUs), else
    fp32; never emulated bf16, which is slower than fp32. bf16 asked for on hardware without it
    runs fp32 with one warning. Rank 0 logs the answer as the run's `precision_used` param.
    """
    if precision == "fp32":
        return "fp32"
    if bf16_supported(device):
        return "bf16"
    if precision == "bf16":
        _warn_once(
            f"precision:{_device_type(device)}",
            f"train.precision=bf16 but {_device_type(device)!r} has no native bf16 (a GPU before "
            "Ampere, or a CPU without avx512_bf16/AMX); running in fp32",
        )
    return "fp32"


def use_bf16(precision: str, device: str | torch.device) -> bool:
    """The run's bf16 decision from `train.precision` (see :func:`resolve_precision`)."""
    return resolve_precision(precision, device) == "bf16"
