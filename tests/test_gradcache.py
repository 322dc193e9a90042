"""Gradient-cached step == plain full-batch step (world size 1 and 2), plus precision helpers.

Reference for models with dropout: the plain step that draws the SAME dropout masks, i.e. the
encoder run chunk by chunk with autograd from the same seed, then one loss over everything. This
is the semantics gradcache promises (RNG replayed per chunk); a full-batch dropout call would draw
its masks in a different order. Without dropout the reference is the literal full-batch forward.
BatchNorm: equality tests use BN-free models; BN in train mode is tested against the per-chunk
reference (its documented semantics) including the running statistics.
"""

import logging
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from distcl.losses import build_loss
from distcl.runtime import precision
from distcl.train.gradcache import gradcache_step

torch.set_num_threads(1)
F64 = torch.float64
LOSSES = [("ntxent", {"temperature": 0.5}), ("supcon", {"temperature": 0.5})]


def _mlp(dropout: float, bn: bool = False) -> nn.Sequential:
    torch.manual_seed(0)
    layers = [nn.Linear(6, 16)] + ([nn.BatchNorm1d(16)] if bn else []) + [nn.ReLU()]
    layers += [nn.Dropout(dropout), nn.Linear(16, 5)]
    return nn.Sequential(*layers).to(F64)


def _data(n: int, n_views: int = 2, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    views = [torch.randn(n, 6, generator=g, dtype=F64) for _ in range(n_views)]  # V x (n x 6)
    labels = torch.randint(0, 3, (n,), generator=g)  # n
    return views, labels


def _reference_backward(model, loss_fn, views, labels, chunk_size):
    """Plain autograd; encoder called chunk by chunk (same RNG order as gradcache's pass 1)."""
    embs = [torch.cat([model(c) for c in v.split(chunk_size)]) for v in views]
    loss = loss_fn(embs, labels)
    loss.backward()
    return loss.detach()


def _sgd_update(model: nn.Module, lr: float = 1.0) -> list[torch.Tensor]:
    """One SGD step; returns the parameter updates (new - old)."""
    before = [p.detach().clone() for p in model.parameters()]
    torch.optim.SGD(model.parameters(), lr=lr).step()
    return [p.detach() - b for p, b in zip(model.parameters(), before, strict=True)]


def _rel_err(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    num = sum((x - y).pow(2).sum() for x, y in zip(a, b, strict=True)) ** 0.5
    return float(num / sum(y.pow(2).sum() for y in b) ** 0.5)


@pytest.mark.parametrize("name,params", LOSSES)
@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_gradcache_equals_plain_step(name, params, dropout):
    views, labels = _data(12)
    ref_model, gc_model = _mlp(dropout), _mlp(dropout)
    loss_fn = build_loss(name, **params)
    full = 12 if dropout == 0 else 4  # literal full-batch forward when there is no dropout

    torch.manual_seed(7)
    ref_loss = _reference_backward(ref_model, loss_fn, views, labels, chunk_size=full)
    torch.manual_seed(7)
    gc_loss = gradcache_step(gc_model, loss_fn, views, labels, chunk_size=4)
    after_gc = torch.rand(3)  # RNG left as after one pass 1 + loss
    assert gc_loss.requires_grad is False
    torch.testing.assert_close(gc_loss, ref_loss, rtol=1e-12, atol=0)
    upd_ref, upd_gc = _sgd_update(ref_model), _sgd_update(gc_model)
    assert _rel_err(upd_gc, upd_ref) <= 1e-6
    if dropout:
        replay = _mlp(dropout)  # (seeds its own init)
        torch.manual_seed(7)
        _reference_backward(replay, loss_fn, views, labels, chunk_size=4)
        torch.testing.assert_close(torch.rand(3), after_gc, rtol=0, atol=0)


def test_dropout_masks_matter():
    """Negative control: other masks (another seed) give a different gradient, so the equality
    above really depends on replaying each chunk's RNG state."""
    views, labels = _data(12)
    loss_fn = build_loss("ntxent", temperature=0.5)
    a, b = _mlp(0.3), _mlp(0.3)
    torch.manual_seed(7)
    gradcache_step(a, loss_fn, views, labels, chunk_size=4)
    torch.manual_seed(8)
    _reference_backward(b, loss_fn, views, labels, chunk_size=4)
    assert _rel_err(_sgd_update(a), _sgd_update(b)) > 1e-3


def test_loss_parameters_get_their_gradient():
    """A loss with learnable parameters (logistic / SigLIP: scale and bias) gets the same
    gradients from the loss backward inside gradcache as from the plain backward."""
    views, labels = _data(12)
    ref_model, gc_model = _mlp(0.0), _mlp(0.0)
    ref_loss, gc_loss = build_loss("logistic"), build_loss("logistic")
    assert len(list(ref_loss.parameters())) > 0
    _reference_backward(ref_model, ref_loss, views, None, chunk_size=12)
    gradcache_step(gc_model, gc_loss, views, None, chunk_size=5)  # uneven last chunk
    for p, q in zip(gc_loss.parameters(), ref_loss.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-10, atol=1e-14)
    assert _rel_err(_sgd_update(gc_model), _sgd_update(ref_model)) <= 1e-6


def test_batchnorm_train_mode_per_chunk_semantics():
    """BN in train mode: gradcache == plain per-chunk forward, and running stats updated once
    per chunk (pass 1's updates are undone)."""
    views, labels = _data(12)
    ref_model, gc_model = _mlp(0.0, bn=True), _mlp(0.0, bn=True)
    loss_fn = build_loss("supcon", temperature=0.5)
    _reference_backward(ref_model, loss_fn, views, labels, chunk_size=4)
    gradcache_step(gc_model, loss_fn, views, labels, chunk_size=4)
    bn_ref, bn_gc = ref_model[1], gc_model[1]
    assert int(bn_gc.num_batches_tracked) == 6  # 2 views x 3 chunks, not 12
    torch.testing.assert_close(bn_gc.running_mean, bn_ref.running_mean, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(bn_gc.running_var, bn_ref.running_var, rtol=1e-12, atol=1e-15)
    assert _rel_err(_sgd_update(gc_model), _sgd_update(ref_model)) <= 1e-6


def test_bf16_autocast_inside_encode():
    """Autocast inside encode: loss in fp32, gradients close to the fp32 step."""
    views = [v.float() for v in _data(16)[0]]
    fp32, bf16 = _mlp(0.0).float(), _mlp(0.0).float()
    loss_fn = build_loss("ntxent", temperature=0.5)

    def encode(x: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return bf16(x)  # c x D in bf16

    loss = gradcache_step(encode, loss_fn, views, None, chunk_size=8, bn_module=bf16)
    _reference_backward(fp32, loss_fn, views, None, chunk_size=16)
    assert loss.dtype == torch.float32
    assert bf16[0].weight.grad.dtype == torch.float32
    assert _rel_err([bf16[0].weight.grad], [fp32[0].weight.grad]) < 0.1


def test_precision_helpers(caplog):
    assert isinstance(precision.bf16_supported("cpu"), bool)
    assert precision.bf16_supported("cpu") == precision.bf16_supported(torch.device("cpu"))
    x = torch.ones(2, 2)
    with precision.autocast("cpu", enabled=False):
        assert (x @ x).dtype == torch.float32
    if precision.bf16_supported("cpu"):
        with precision.autocast("cpu", enabled=True):
            assert (x @ x).dtype == torch.bfloat16
    assert precision.fp32_embeddings(x.bfloat16()).dtype == torch.float32
    assert precision.fp32_embeddings(x.double()).dtype == F64
    conv = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
    conv = precision.to_channels_last(conv, enabled=True)
    assert conv[0].weight.is_contiguous(memory_format=torch.channels_last)
    with precision.no_warnings_seen(), caplog.at_level(logging.WARNING, "distcl.runtime.precision"):
        for _ in range(2):  # one warning each, however often asked
            with precision.autocast("meta", enabled=True):
                pass
            precision.to_channels_last(nn.Linear(2, 2), enabled=True)
            assert precision.maybe_sync_batchnorm(conv, enabled=True) is conv  # no group
        msgs = [r.getMessage() for r in caplog.records]
    assert len(msgs) == 3, msgs
    assert "'meta'" in msgs[0] and "no 4-D" in msgs[1] and "world size > 1" in msgs[2]


# ---- world size 2: two real gloo processes, compared with the single-process global batch ----

B_GLOBAL, CHUNK, SEED = 8, 2, 11


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    import torch.distributed as tdist  # this test starts the group itself
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    tdist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        views, labels = _data(B_GLOBAL)
        lo, hi = rank * B_GLOBAL // world, (rank + 1) * B_GLOBAL // world
        out = {}
        for name, params in LOSSES:
            model = nn.parallel.DistributedDataParallel(_mlp(0.3))
            calls = []

            def counting_hook(state, bucket, calls=calls):
                calls.append(1)  # one call per bucket all-reduce
                return allreduce_hook(state, bucket)

            model.register_comm_hook(None, counting_hook)
            torch.manual_seed(SEED + rank)
            loss = gradcache_step(
                model, build_loss(name, **params), [v[lo:hi] for v in views], labels[lo:hi], CHUNK
            )
            out[name] = ([p.grad.clone() for p in model.parameters()], _sgd_update(model), loss)
            out[name + "_allreduce_calls"] = len(calls)
        out["syncbn_cpu"] = type(precision.maybe_sync_batchnorm(_mlp(0.0, bn=True), True)[1])
        torch.save(out, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        tdist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_gradcache_ddp_world_size_2_equals_single_process(tmp_path):
    world = 2
    mp.spawn(_worker, args=(world, _free_port(), str(tmp_path)), nprocs=world, join=True)
    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(world)]
    views, labels = _data(B_GLOBAL)
    local = B_GLOBAL // world
    for name, params in LOSSES:
        # Single process, full global batch, plain backward, same dropout masks as each rank.
        model, loss_fn = _mlp(0.3), build_loss(name, **params)
        per_rank = []  # rank r's pass-1 order: its seed, then view 0 chunks, view 1 chunks
        for r in range(world):
            torch.manual_seed(SEED + r)
            shard = [v[r * local : (r + 1) * local] for v in views]
            per_rank.append([torch.cat([model(c) for c in x.split(CHUNK)]) for x in shard])
        embs = [torch.cat([per_rank[r][i] for r in range(world)]) for i in range(len(views))]
        ref_loss = loss_fn(embs, labels)
        ref_loss.backward()
        ref_grads = [p.grad.clone() for p in model.parameters()]
        ref_update = _sgd_update(model)
        for r, res in enumerate(results):
            grads, update, _ = res[name]
            assert _rel_err(grads, ref_grads) <= 1e-6, (name, r)
            assert _rel_err(update, ref_update) <= 1e-6, (name, r)
            # no_sync on all but the last chunk: one all-reduce per bucket per step (1 bucket
            # for this tiny model), not one per chunk (2 views x 2 chunks = 4).
            assert res[name + "_allreduce_calls"] == 1, res[name + "_allreduce_calls"]
        mean_loss = sum(res[name][2] for res in results) / world
        torch.testing.assert_close(mean_loss, ref_loss.detach(), rtol=1e-10, atol=0)
    assert all(res["syncbn_cpu"] is nn.BatchNorm1d for res in results)  # CPU: fallback
