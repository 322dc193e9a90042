"""FFCV loaders: N augmented views of one stored image field, sharded per rank.

One `.beton` field `image` feeds every view: view 0 is the field's own pipeline, views 1..N-1 are
`PipelineSpec(source="image")` pipelines, so the image is decoded once per view but stored once.
Batches come out as `(view0, label, view1, ...)`: stored fields first, then the extra views.
Images leave the loader as `uint8 B x 3 x H x W` tensors; `to_float` turns them into the model's
normalised float input on the training device. `build_train_loader` picks FFCV or the
torchvision fallback (`torch_loader.py`, same batches) from `data.loader`.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distcl.data.beton import read_meta
from distcl.data.recipes import ViewSpec, config_view_spec, view_recipes
from distcl.data.sources import DataError

EVAL_CROP_RATIO = 224 / 256  # centre crop of mixed-size images for evaluation (ImageNet's)


def view_ops(spec: ViewSpec, channels: int, n_views: int) -> list[list]:
    """Per-view FFCV op lists (decoder first), before the tensor conversion."""
    from distcl.data.views import augment_ops

    return [augment_ops(r, channels) for r in view_recipes(spec, channels, n_views)]


def _tensor_tail():
    from ffcv.transforms import ToTensor, ToTorchImage

    return [ToTensor(), ToTorchImage(channels_last=True, convert_back_int16=False)]


def _label_pipeline():
    from ffcv.fields.basics import IntDecoder
    from ffcv.transforms import Squeeze, ToTensor

    return [IntDecoder(), ToTensor(), Squeeze()]


def _keeps_torch_threads(build: Callable[..., Any]) -> Callable[..., Any]:
    """Keep torch's thread count what distcl set it to, whatever FFCV's loaders do.

    FFCV 1.0.2's `Compiler.set_num_threads(n)` sets numba's threads AND `torch.set_num_threads`,
    which is process-wide: at its first import (to 1), in every Loader's constructor and at the
    start of every epoch, from the loader's own thread (to the loader's `num_workers`). So a
    worker with `train.cpus_per_worker=4` and one loader thread trained on ONE torch thread
    from its first batch on. The wrapped builders restore torch's count around the import and
    the constructor, and FFCV's compiler is left setting numba's threads only (numba's count is
    per thread, which is why FFCV sets it from the loader's thread).
    """

    @functools.wraps(build)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        threads = torch.get_num_threads()
        try:
            _numba_threads_only()
            return build(*args, **kwargs)
        finally:
            torch.set_num_threads(threads)

    return wrapper


def _numba_threads_only() -> None:
    """Make FFCV's `Compiler.set_num_threads` set numba's threads and leave torch's alone."""
    import numba
    from ffcv.pipeline.compiler import Compiler

    if getattr(Compiler.set_num_threads, "_distcl", False):
        return

    def set_num_threads(cls, n: int) -> None:
        n = n if n >= 1 else (os.cpu_count() or 1)
        cls.num_threads = n  # read by FFCV's compiler: prange (parallel) when > 1
        numba.set_num_threads(n)

    set_num_threads._distcl = True  # type: ignore[attr-defined]
    Compiler.set_num_threads = classmethod(set_num_threads)


@_keeps_torch_threads
def train_loader(
    path: str | Path,
    *,
    batch_size: int,
    views: int,
    spec: ViewSpec,
    seed: int,
    distributed: bool,
    num_workers: int,
    epoch: int = 0,
):
    """Random-order loader of `views` augmented views; `batch_size` is per rank.

    Build it inside the worker after the process group exists; every rank passes the same seed,
    so the shards are disjoint. `epoch` sets where a resumed run continues.
    """
    from ffcv.loader import OrderOption
    from ffcv.pipeline import PipelineSpec

    meta = read_meta(Path(path))
    ops = view_ops(spec, meta["channels"], views)
    pipelines = {"image": ops[0] + _tensor_tail(), "label": _label_pipeline()}
    for v in range(1, views):
        pipelines[f"image_v{v + 1}"] = PipelineSpec("image", transforms=ops[v] + _tensor_tail())
    loader = _ffcv_loader(
        path, pipelines, batch_size, num_workers, OrderOption.RANDOM, True,
        distributed=distributed, seed=seed,
    )  # fmt: skip
    loader.next_epoch = epoch
    if len(loader) == 0:
        raise DataError(
            f"{path} has {meta['count']} images: not one batch of {batch_size} per worker. "
            "Lower train.global_batch or use more data."
        )
    return loader


def build_train_loader(
    data,
    path: str | Path,
    *,
    batch_size: int,
    seed: int,
    num_workers: int,
    epoch: int = 0,
    rank: int = 0,
    world: int = 1,
):
    """The training loader `data.loader` names (data: a config.DataConfig): FFCV over the
    `.beton` at `path`, or the torchvision fallback over the raw source. Same batches."""
    spec = config_view_spec(data)
    if data.loader == "torchvision":
        from distcl.data.sources import load_source
        from distcl.data.torch_loader import torch_train_loader

        cache = str(Path(data.beton_dir) / "raw")
        return torch_train_loader(
            load_source(data.dataset, data.split, data.root, cache=cache),
            batch_size=batch_size,
            views=data.views,
            spec=spec,
            seed=seed,
            rank=rank,
            world=world,
            num_workers=num_workers,
            epoch=epoch,
            max_images=data.max_images,
        )
    return train_loader(
        path,
        batch_size=batch_size,
        views=data.views,
        spec=spec,
        seed=seed,
        distributed=world > 1,
        num_workers=num_workers,
        epoch=epoch,
    )


@_keeps_torch_threads
def eval_loader(
    path: str | Path, *, batch_size: int, num_workers: int, indices: np.ndarray | None = None
):
    """Sequential, un-augmented loader yielding `(image uint8 B x 3 x H x W, label)`.

    Images of mixed sizes (an ImageFolder tree) are centre-cropped (EVAL_CROP_RATIO of the
    shorter side) and resized to the sidecar's `resolution`.
    """
    from ffcv.fields.rgb_image import CenterCropRGBImageDecoder, SimpleRGBImageDecoder
    from ffcv.loader import OrderOption

    meta = read_meta(Path(path))
    if meta.get("uniform", True):
        decoder = SimpleRGBImageDecoder()
    else:
        side = meta["resolution"]
        decoder = CenterCropRGBImageDecoder((side, side), ratio=EVAL_CROP_RATIO)
    pipelines = {"image": [decoder, *_tensor_tail()], "label": _label_pipeline()}
    return _ffcv_loader(
        path, pipelines, batch_size, num_workers, OrderOption.SEQUENTIAL, False, indices=indices
    )


def _ffcv_loader(path, pipelines, batch_size, num_workers, order, drop_last, **extra):
    """FFCV's Loader over `path` with two batches prepared ahead (their memory is pinned)."""
    from ffcv.loader import Loader

    return Loader(
        str(path), batch_size=batch_size, num_workers=num_workers, order=order,
        pipelines=pipelines, drop_last=drop_last, batches_ahead=2, **extra,
    )  # fmt: skip


def split_batch(batch) -> tuple[list[torch.Tensor], torch.Tensor]:
    """`(view0, label, view1, ...)` -> (views, labels)."""
    return [batch[0], *batch[2:]], batch[1]


def to_float(x: torch.Tensor, channels: int, device: torch.device) -> torch.Tensor:
    """uint8 `B x 3 x H x W` -> float `B x C x H x W` in [-1, 1] (keeps channels_last)."""
    x = x[:, :channels].to(device, non_blocking=True)
    return x.float().mul_(2.0 / 255.0).sub_(1.0)
