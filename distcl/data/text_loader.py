"""The FFCV Loader over a WordNet text `.beton` (written by `text_beton.prepare_wordnet`).

Batches are `(a, b, synset, category)`: two `B x max_len` int64 rows of byte token ids, then
two `B` int64 labels. Order, seed, epoch and sharding follow the image loader
(`loader.train_loader`): RANDOM order from one seed shared by all ranks, FFCV's
DistributedSampler when world > 1, `next_epoch` set for a resumed run.

The ids are decoded by `_IdsDecoder`, not FFCV's `NDArrayDecoder`: that one compiles FFCV's
ctypes `memcpy` afresh for each loader, and when such a loader was garbage collected numba
0.68's finalizer for it raised `KeyError` ("Exception ignored in: <finalize object>"; under
pytest it once surfaced as a SystemError inside `ast.parse`). A plain compiled loop copies the
ids instead, and widens them to int64 on the way, so no torch-side cast follows.
"""

from __future__ import annotations

import os
from dataclasses import replace

import numpy as np

from distcl.data.loader import _ffcv_loader, _keeps_torch_threads, _label_pipeline
from distcl.data.source_types import DataError
from distcl.data.text_beton import STORED_DTYPE, read_text_meta


def _ids_decoder():
    """An FFCV decoder: stored int16 id rows -> `B x max_len` int64 (see the module doc)."""
    from ffcv.fields.ndarray import NDArrayDecoder
    from ffcv.pipeline.allocation_query import AllocationQuery
    from ffcv.pipeline.compiler import Compiler

    class _IdsDecoder(NDArrayDecoder):
        def declare_state_and_memory(self, previous_state):
            shape, dtype = self.field.shape, np.dtype(np.int64)
            state = replace(previous_state, jit_mode=True, shape=shape, dtype=dtype)
            return state, AllocationQuery(shape, dtype)

        def generate_code(self):
            my_range, mem_read, stored = Compiler.get_iterator(), self.memory_read, STORED_DTYPE

            def decode(indices, destination, metadata, storage_state):
                for ix in my_range(indices.shape[0]):
                    row = mem_read(metadata[indices[ix]], storage_state)  # max_len*2 bytes
                    destination[ix, :] = row.view(stored)
                return destination

            return decode

    return _IdsDecoder()


def _pipelines() -> dict:
    from ffcv.transforms import ToTensor

    return {
        "a": [_ids_decoder(), ToTensor()],  # B x max_len int64
        "b": [_ids_decoder(), ToTensor()],
        "synset": _label_pipeline(),  # B int64
        "category": _label_pipeline(),
    }


def _check_world(rank: int, world: int) -> None:
    """FFCV shards through torch's DistributedSampler, which takes rank and size from the
    process group: refuse a rank/world that the group does not have."""
    if not 0 <= rank < world:
        raise DataError(f"rank must be in 0..world-1, got rank={rank} world={world}")
    if world > 1:
        from distcl.runtime.dist import get_rank, get_world_size

        have = (get_rank(), get_world_size())
        if have != (rank, world):
            raise DataError(
                f"text_loader(rank={rank}, world={world}) shards through torch.distributed, "
                f"but this process is rank {have[0]} of {have[1]}. Build the loader inside "
                f"each worker after init_process_group, or pass world=1 for one process."
            )


@_keeps_torch_threads
def text_loader(
    path: str | os.PathLike,
    batch_size: int,
    *,
    rank: int = 0,
    world: int = 1,
    seed: int = 0,
    epoch: int = 0,
    shuffle: bool = True,
    drop_last: bool = True,
    num_workers: int = 1,
    max_records: int = 0,
):
    """FFCV Loader yielding `(a, b, synset, category)`: `B x max_len` int64 ids twice, then
    `B` int64 labels. `batch_size` is per rank.

    world > 1 shards the records over the ranks of the process group (every rank passes the
    same seed; the shards are disjoint), as `loader.train_loader` does for images. `epoch` is
    where a resumed run continues: the order of epoch e is the same on every run. FFCV reuses
    its batch buffers: clone a batch to keep it past the next one. `max_records` > 0 reads only
    that many records, a fixed random subset (seed 0, the same on every rank and run): for
    demos and tests (`data.max_images` in a config).
    """
    from ffcv.loader import OrderOption

    meta = read_text_meta(path)
    _check_world(rank, world)
    order = OrderOption.RANDOM if shuffle else OrderOption.SEQUENTIAL
    subset = {}
    if 0 < max_records < meta["count"]:
        pick = np.random.default_rng(0).permutation(meta["count"])[:max_records]
        subset["indices"] = np.sort(pick)
    loader = _ffcv_loader(
        path, _pipelines(), batch_size, num_workers, order, drop_last,
        distributed=world > 1, seed=seed, **subset,
    )  # fmt: skip
    loader.next_epoch = epoch
    if len(loader) == 0:
        raise DataError(
            f"{path} has {meta['count']} records: not one batch of {batch_size} per rank "
            f"with drop_last; lower the batch size or pass drop_last=False."
        )
    return loader
