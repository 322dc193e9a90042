"""torchvision DataLoader fallback (`data.loader=torchvision`): no FFCV in the training loop.

Reads the raw source (`distcl.data.sources.load_source`) instead of the `.beton`, so it runs
where FFCV cannot be built, at a fraction of FFCV's speed (DESIGN.md "Measured speed": about
620 against 42,700 images/s for SimCLR views at 32 px on 2 cores). It yields what the FFCV
loader yields: `(view0, label, view1, ...)` with each view uint8 `B x 3 x H x W` (channels_last
strides; grey images replicated to 3 channels) and labels int64 `B`, the same views
(`torch_views.py`), and the same sharding: one seeded permutation per epoch, identical on every
rank, rank r taking every world-th image, the tail dropped so all ranks take the same number of
steps. Each image's random draws are seeded by (seed, epoch, index), so a resumed epoch sees
the same views; `epoch` / `next_epoch` work as in the FFCV loader.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from distcl.data.recipes import view_recipes
from distcl.data.sources import DataError
from distcl.data.torch_views import augment


class ShardSampler(Sampler):
    """`(index, epoch)` keys of this rank's shard of a seeded random permutation of `n`."""

    def __init__(self, n: int, *, seed: int, rank: int = 0, world: int = 1, epoch: int = 0):
        if not 0 <= rank < world:
            raise ValueError(f"rank must be in [0, {world}), got {rank}")
        self.n, self.seed, self.rank, self.world, self.epoch = n, seed, rank, world, epoch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n // self.world

    def __iter__(self):
        perm = np.random.default_rng([self.seed, self.epoch]).permutation(self.n)
        shard = perm[: len(self) * self.world][self.rank :: self.world]  # n // world
        return iter([(int(i), self.epoch) for i in shard])


class ViewDataset(Dataset):
    """`dataset[(index, epoch)]` -> `(view0, label, view1, ...)`, views uint8 `R x R x 3`."""

    def __init__(self, source, recipes: list, seed: int, n: int):
        self.source, self.recipes, self.seed, self.n = source, recipes, seed, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, key: tuple[int, int]):
        index, epoch = key
        rng = np.random.default_rng([self.seed, epoch, index])  # this image's draws, this epoch
        image, label = self.source[index]
        image = np.array(image, dtype=np.uint8)  # a writable copy (sources may be memory-mapped)
        if image.ndim == 2:
            image = image[..., None]
        img = torch.from_numpy(image).permute(2, 0, 1)  # C x H x W
        views = []
        for recipe in self.recipes:
            v = augment(img, recipe, rng)  # C x R x R
            views.append(v.expand(3, -1, -1).permute(1, 2, 0).contiguous())  # R x R x 3
        return (views[0], label, *views[1:])


class TorchTrainLoader:
    """Iterable over epochs like FFCV's Loader: each `iter()` is the next epoch."""

    def __init__(self, loader: DataLoader, sampler: ShardSampler, epoch: int):
        self.loader, self.sampler, self.next_epoch = loader, sampler, epoch

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        self.sampler.set_epoch(self.next_epoch)
        self.next_epoch += 1
        for batch in self.loader:
            # views: B x R x R x 3 -> B x 3 x R x R with channels_last strides, as FFCV's
            # ToTorchImage(channels_last=True); labels: int64 B
            yield tuple(x.permute(0, 3, 1, 2) if x.ndim == 4 else x for x in batch)


def torch_train_loader(
    source,
    *,
    batch_size: int,
    views: int,
    spec,
    seed: int,
    rank: int = 0,
    world: int = 1,
    num_workers: int = 1,
    epoch: int = 0,
    max_images: int = 0,
) -> TorchTrainLoader:
    """Random-order loader of `views` augmented views of `source`; `batch_size` is per rank.

    spec: a recipes.ViewSpec. num_workers: DataLoader worker processes (0 = in this process);
    the training loop passes the same count it gives FFCV (data.loader_workers, else the CPUs
    Ray gives the worker). Every rank passes the same seed, so the shards are disjoint.
    """
    n = min(len(source), max_images) if max_images else len(source)
    sampler = ShardSampler(n, seed=seed, rank=rank, world=world, epoch=epoch)
    dataset = ViewDataset(source, view_recipes(spec, source.channels, views), seed, n)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        drop_last=True,
    )
    if len(loader) == 0:
        raise DataError(
            f"{source.name}/{source.split} has {n} images: not one batch of {batch_size} per "
            "worker. Lower train.global_batch or use more data."
        )
    return TorchTrainLoader(loader, sampler, epoch)
