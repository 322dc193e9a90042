"""torchvision fallback loader: FFCV's batch structure, per-image views, disjoint rank shards."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from distcl.config import schema as config
from distcl.data.loader import build_train_loader, split_batch
from distcl.data.recipes import GreyRecipe, Recipe, ViewSpec, view_recipes
from distcl.data.sources import ArraySource, DataError, synthetic
from distcl.data.torch_loader import ShardSampler, torch_train_loader
from distcl.data.torch_views import crop_box

from .native_fixtures import images

N = 64
GREY = {"spec": ViewSpec(28)}  # the cheaper 1-channel views, where the recipe does not matter

torch.set_num_threads(1)


def _indexed(channels: int = 3, same: bool = False) -> ArraySource:
    """Labels are image indices, so a batch tells exactly which images a rank saw."""
    x = images(1 if same else N, 32, 32, seed=3)
    x = np.repeat(x, N, axis=0) if same else x
    x = x[..., :1] if channels == 1 else x
    return ArraySource("synthetic", "train", x, np.arange(N, dtype=np.int64), N)


def _loader(source, **kw):
    args = {"batch_size": 16, "views": 2, "spec": ViewSpec(32), "seed": 1, "num_workers": 0}
    return torch_train_loader(source, **{**args, **kw})


def test_batch_structure_matches_the_ffcv_loader():
    batch = next(iter(_loader(_indexed(), views=3)))
    assert len(batch) == 4  # (view0, label, view1, view2): stored fields first, then extra views
    views, labels = split_batch(batch)
    assert labels.dtype == torch.int64 and labels.shape == (16,)
    for v in views:
        assert v.dtype == torch.uint8 and v.shape == (16, 3, 32, 32)
        assert v.is_contiguous(memory_format=torch.channels_last)  # as ToTorchImage(True)


def test_grey_images_come_out_as_three_equal_channels():
    views, _ = split_batch(next(iter(_loader(_indexed(channels=1), spec=ViewSpec(28)))))
    assert views[0].shape == (16, 3, 28, 28)
    assert torch.equal(views[0][:, 0], views[0][:, 1]) and torch.equal(
        views[0][:, 0], views[0][:, 2]
    )


def test_two_views_differ_and_decisions_are_per_image():
    views, _ = split_batch(next(iter(_loader(_indexed(same=True), batch_size=32))))
    a, b = views[0].float().flatten(1), views[1].float().flatten(1)  # 32 x 3072
    assert ((a - b).abs().mean(1) > 1.0).float().mean() > 0.9  # views of one image differ
    # every image is the same picture: a per-batch draw would make all rows equal
    distinct = {tuple(row[::97].tolist()) for row in a.to(torch.uint8)}
    assert len(distinct) >= 30


def test_ranks_get_disjoint_shards_covering_the_data():
    seen = []
    for rank in range(2):
        loader = _loader(_indexed(channels=1), rank=rank, world=2, **GREY)
        seen.append(torch.cat([split_batch(b)[1] for b in loader]).tolist())
    assert len(seen[0]) == len(set(seen[0])) == N // 2 and len(seen[1]) == N // 2
    assert not set(seen[0]) & set(seen[1]) and set(seen[0]) | set(seen[1]) == set(range(N))


def test_shard_sampler_drops_the_uneven_tail_and_reshuffles_per_epoch():
    s = ShardSampler(10, seed=0, rank=2, world=3)
    assert len(s) == len(list(s)) == 3
    first = [i for i, _ in s]
    s.set_epoch(1)
    assert [e for _, e in s] == [1, 1, 1] and [i for i, _ in s] != first


def test_resumed_epoch_sees_the_same_order_and_views():
    loader = _loader(_indexed(), batch_size=32)
    next(iter(loader))  # epoch 0 (partly)
    epoch1 = list(loader)
    resumed = list(_loader(_indexed(), batch_size=32, epoch=1))
    assert len(epoch1) == len(resumed) == N // 32
    for b1, b2 in zip(epoch1, resumed, strict=True):
        assert all(torch.equal(x, y) for x, y in zip(b1, b2, strict=True))


def test_worker_processes_yield_the_same_batches():
    in_process = list(_loader(_indexed(channels=1), **GREY))
    with_workers = list(_loader(_indexed(channels=1), num_workers=1, **GREY))
    for b1, b2 in zip(in_process, with_workers, strict=True):
        assert all(torch.equal(x, y) for x, y in zip(b1, b2, strict=True))


def test_views_follow_the_ffcv_recipes():
    grey = view_recipes(ViewSpec(28, crop_scale_min=0.3, jitter=0.2, jitter_p=0.5), 1, 2)
    assert grey == [GreyRecipe(28, (0.3, 1.0), 0.2, 0.5)] * 2
    simclr = view_recipes(ViewSpec(32), 3, 2)[0]
    assert isinstance(simclr, Recipe) and simclr.scale == (0.08, 1.0) and simclr.grey_p == 0.2
    assert [r.resolution for r in view_recipes(ViewSpec(32, preset="multicrop"), 3, 4)] == [
        32,
        32,
        14,
        14,
    ]
    with pytest.raises(ValueError, match="unknown view preset"):
        view_recipes(ViewSpec(32, preset="nope"), 3, 2)


def test_crop_box_stays_inside_and_within_scale():
    rng = np.random.default_rng(0)
    for _ in range(200):
        top, left, h, w = crop_box(40, 60, (0.2, 0.5), rng)
        assert 0 <= top and top + h <= 40 and 0 <= left and left + w <= 60
        assert 0.15 <= h * w / 2400 <= 0.55  # rounding of h and w moves the area a little


def test_build_train_loader_picks_torchvision_from_config(tmp_path):
    cfg = config.load(
        None,
        [
            "data.dataset=synthetic",
            "data.loader=torchvision",
            "data.loader_workers=1",
            f"data.beton_dir={tmp_path}",
        ],
    )
    loader = build_train_loader(cfg.data, "unused.beton", batch_size=64, seed=0, num_workers=0)
    batch = next(iter(loader))
    assert len(loader) == len(synthetic("train")) // 64 and batch[0].shape == (64, 3, 28, 28)


def test_too_few_images_for_one_batch_is_a_clear_error():
    with pytest.raises(DataError, match="not one batch of 128 per worker"):
        _loader(_indexed(), batch_size=128)
