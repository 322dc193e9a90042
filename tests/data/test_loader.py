"""FFCV training loader: disjoint shards per rank, two different views, resumable epochs."""

from __future__ import annotations

import numpy as np
import torch
import torch.multiprocessing as mp

from distcl.data.beton import write_beton
from distcl.data.loader import split_batch, train_loader
from distcl.data.recipes import ViewSpec
from distcl.data.sources import ArraySource

N = 256


def _indexed_beton(path):
    """Labels are image indices, so each batch tells exactly which images a rank saw."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(N, 28, 28, 1), dtype=np.uint8)
    src = ArraySource("synthetic", "train", images, np.arange(N, dtype=np.int64), N)
    write_beton(src, path)


def _rank_indices(rank: int, world: int, port: int, path: str, out) -> None:
    import torch.distributed as td

    torch.set_num_threads(1)
    td.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    loader = train_loader(
        path, batch_size=32, views=2, spec=ViewSpec(28), seed=5, distributed=True, num_workers=1
    )
    seen = [split_batch(b)[1].clone() for b in loader]
    out.put((rank, torch.cat(seen).tolist()))
    td.barrier()
    td.destroy_process_group()


def test_shards_are_disjoint_across_two_ranks(tmp_path):
    from tests.conftest import free_port

    path = tmp_path / "idx.beton"
    _indexed_beton(path)
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_rank_indices, args=(r, 2, port, str(path), out)) for r in range(2)]
    for p in procs:
        p.start()
    results = dict(out.get(timeout=240) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    a, b = set(results[0]), set(results[1])
    assert len(results[0]) == len(a) == N // 2 and len(b) == N // 2
    assert not a & b and a | b == set(range(N))


def test_two_views_differ_and_epochs_resume(tmp_path):
    path = tmp_path / "idx.beton"
    _indexed_beton(path)
    loader = train_loader(
        path, batch_size=64, views=2, spec=ViewSpec(28), seed=1, distributed=False, num_workers=1
    )
    views, labels = split_batch(next(iter(loader)))
    assert len(views) == 2 and views[0].shape == (64, 3, 28, 28) and views[0].dtype == torch.uint8
    differ = (views[0].float() - views[1].float()).abs().flatten(1).mean(1) > 1.0
    assert differ.float().mean() > 0.9  # independent per-image augmentations
    order_epoch1 = torch.cat([split_batch(b)[1].clone() for b in loader])
    resumed = train_loader(
        path,
        batch_size=64,
        views=2,
        spec=ViewSpec(28),
        seed=1,
        distributed=False,
        num_workers=1,
        epoch=1,
    )
    assert torch.equal(torch.cat([split_batch(b)[1].clone() for b in resumed]), order_epoch1)


def _threads_seen(path: str, out) -> None:
    torch.set_num_threads(2)  # what a worker with train.cpus_per_worker=2 sets
    seen = [torch.get_num_threads()]
    loader = train_loader(  # the first FFCV import happens in here
        path, batch_size=32, views=2, spec=ViewSpec(28), seed=5, distributed=False, num_workers=1
    )
    seen.append(torch.get_num_threads())
    for _ in range(2):  # FFCV's epoch iterator sets threads from its own thread
        for _ in loader:
            seen.append(torch.get_num_threads())
    out.put(seen)


def test_the_loader_leaves_torch_threads_alone(tmp_path):
    """FFCV set torch's (process-wide) thread count to the loader's num_workers at import, in
    the Loader and at every epoch: a 2-CPU worker with one loader thread trained on one."""
    path = tmp_path / "idx.beton"
    _indexed_beton(path)
    ctx = mp.get_context("spawn")  # a fresh process: FFCV not imported yet
    out = ctx.Queue()
    proc = ctx.Process(target=_threads_seen, args=(str(path), out))
    proc.start()
    seen = out.get(timeout=240)
    proc.join(timeout=60)
    assert proc.exitcode == 0
    assert len(seen) == 2 + 2 * (N // 32) and set(seen) == {2}, seen
