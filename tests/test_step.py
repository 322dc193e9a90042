"""The training step at world size 2 (gloo, two spawned processes), against one process.

- A NaN loss on ONE rank makes BOTH ranks skip the step (they vote), with no hang: before the
  vote, the rank that skipped left the other waiting in DDP's all-reduce until the timeout.
- Gradient caching with DDP around the embedder (no_sync for all chunks but the last) gives the
  single-process gradients of the same global batch cut into the same chunks.
- DDP does not sync buffers before each forward; one `dist.broadcast_buffers` per epoch makes
  every rank's state (BatchNorm statistics, MoCo queue) equal to rank 0's.
- The gather's backward sums rows by reduce-scatter (NCCL) or all-reduce (gloo): both agree.
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.multiprocessing as mp

from distcl.config import schema as config
from distcl.models.methods import build_method
from distcl.runtime import dist
from distcl.train.step import train_step, wrap_ddp
from tests.conftest import free_port

TINY = [
    "model.width=4",
    "model.feat_dim=0",
    "model.proj_hidden=16",
    "model.proj_dim=8",
    "method.predictor_hidden=16",
    "train.global_batch=8",
    "optim.name=sgd",
]
B_GLOBAL, CHUNK, TIMEOUT_S = 8, 2, 30


def _cfg(*more: str) -> config.Config:
    return config.load(None, [*TINY, *more])


def _batch(seed: int = 0) -> tuple[list[torch.Tensor], torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    views = [torch.randn(B_GLOBAL, 1, 12, 12, generator=gen) for _ in range(2)]
    return views, torch.randint(0, 3, (B_GLOBAL,), generator=gen)


def _model(cfg: config.Config) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_method(cfg, 1, 3)


def _shard(views, labels, rank: int, world: int):
    lo, hi = rank * B_GLOBAL // world, (rank + 1) * B_GLOBAL // world
    return [v[lo:hi] for v in views], labels[lo:hi]


def _grads(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.grad.clone() for p in model.parameters() if p.grad is not None]


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    import torch.distributed as tdist

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    tdist.init_process_group(
        "gloo", rank=rank, world_size=world, timeout=timedelta(seconds=TIMEOUT_S)
    )
    out: dict = {}
    try:
        # 1. NaN on rank 1 only; a local loss (cross-entropy), so rank 0's loss stays finite.
        cfg = _cfg("method.name=supervised")
        model = _model(cfg)
        net = wrap_ddp(model, world, 0)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        views, labels = _shard(*_batch(), rank, world)
        bad = [v.clone() for v in views]
        if rank == 1:
            bad[0][0, 0, 0, 0] = float("nan")
        decisions = []
        for step_views in (bad, views, views):
            loss, applied = train_step(model, net, opt, step_views, labels, chunk=0, use_bf16=False)
            decisions.append((bool(torch.isfinite(loss)), applied))
            if applied:
                opt.step()
        out["nan"] = decisions
        out["nan_weights"] = [p.detach().clone() for p in model.parameters()]

        # 2. Gradient caching with DDP around the embedder, SimCLR and the learnable SigLIP loss.
        for loss_name in ("ntxent", "logistic"):
            cfg = _cfg("method.name=simclr", f"loss.name={loss_name}", f"train.chunk_size={CHUNK}")
            model = _model(cfg)
            net = wrap_ddp(model, world, CHUNK)
            opt = torch.optim.SGD(model.parameters(), lr=0.1)
            views, labels = _shard(*_batch(1), rank, world)
            loss, applied = train_step(model, net, opt, views, labels, chunk=CHUNK, use_bf16=False)
            out[f"gc_{loss_name}"] = (float(loss), applied, _grads(model))

        # 3. broadcast_buffers=False, then one broadcast: every rank holds rank 0's buffers.
        cfg = _cfg("method.name=moco_v2", "method.queue_size=16")
        model = _model(cfg)
        net = wrap_ddp(model, world, 0)
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
        views, labels = _shard(*_batch(2), rank, world)
        for step in range(2):
            _, applied = train_step(model, net, opt, views, labels, chunk=0, use_bf16=False)
            opt.step()
            model.after_optimizer_step(step, 10)
        out["bn_before"] = {k: v.clone() for k, v in model.named_buffers()}
        dist.broadcast_buffers(model)
        out["buffers"] = {k: v.clone() for k, v in model.named_buffers()}

        # 4. The gather's backward: both ways of summing a rank's rows agree (NCCL uses the
        # reduce-scatter, gloo the all-reduce; here both run on gloo).
        grad = torch.randn(6, 3, generator=torch.Generator().manual_seed(rank))
        out["rows_rs"] = dist.rows_summed_reduce_scatter(grad, 3)
        out["rows_ar"] = dist.rows_summed_all_reduce(grad, 3)
        torch.save(out, os.path.join(out_dir, f"rank{rank}.pt"))
        tdist.barrier()  # neither rank tears gloo down while the other still talks to it
    finally:
        tdist.destroy_process_group()
    # Leave without the interpreter's teardown: twice in CI a rank aborted there ("terminate
    # called without an active exception", a gloo thread still joinable). Results are saved.
    os._exit(0)


def _single_process_gradcache(loss_name: str) -> tuple[float, list[torch.Tensor]]:
    cfg = _cfg("method.name=simclr", f"loss.name={loss_name}", f"train.chunk_size={CHUNK}")
    model = _model(cfg)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    views, labels = _batch(1)
    loss, applied = train_step(model, model, opt, views, labels, chunk=CHUNK, use_bf16=False)
    assert applied
    return float(loss), _grads(model)


def test_step_at_world_size_2(tmp_path):
    world = 2
    mp.spawn(_worker, args=(world, free_port(), str(tmp_path)), nprocs=world, join=True)
    res = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(world)]

    # 1. Both ranks skipped the NaN step, then both applied the two finite ones.
    assert res[0]["nan"] == [(True, False), (True, True), (True, True)]
    assert res[1]["nan"] == [(False, False), (True, True), (True, True)]
    for a, b in zip(res[0]["nan_weights"], res[1]["nan_weights"], strict=True):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, rtol=0, atol=0)

    # 2. Gradient caching under DDP equals the single process on the global batch.
    for loss_name in ("ntxent", "logistic"):
        want_loss, want = _single_process_gradcache(loss_name)
        losses = [r[f"gc_{loss_name}"][0] for r in res]
        assert abs(sum(losses) / world - want_loss) <= 1e-5 * abs(want_loss)
        for r in res:
            _, applied, grads = r[f"gc_{loss_name}"]
            assert applied and len(grads) == len(want)
            for g, w in zip(grads, want, strict=True):
                torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6)

    # 3. Buffers: BN statistics differ across ranks before the broadcast, equal after.
    differs = [
        k
        for k in res[0]["bn_before"]
        if not torch.equal(res[0]["bn_before"][k], res[1]["bn_before"][k])
    ]
    assert any("running_mean" in k for k in differs), differs
    queue = [k for k in res[0]["bn_before"] if k.endswith("keys")]
    assert queue and all(k not in differs for k in queue)  # the queue is identical anyway
    for k, v in res[0]["buffers"].items():
        assert torch.equal(v, res[1]["buffers"][k]), k

    # 4. Row sums: rank r gets rows [3r, 3r + 3) of the sum of both ranks' gradients.
    total = sum(torch.randn(6, 3, generator=torch.Generator().manual_seed(r)) for r in range(2))
    for r in range(world):
        torch.testing.assert_close(res[r]["rows_rs"], total[3 * r : 3 * r + 3])
        torch.testing.assert_close(res[r]["rows_ar"], total[3 * r : 3 * r + 3])
