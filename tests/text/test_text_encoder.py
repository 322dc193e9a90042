"""TextEncoder: shapes, padding, dropout, gradients, bf16 autocast, and exact NT-Xent at world
sizes 1, 2 and 4 (gloo ranks under DDP) against a naive float64 reference."""

from __future__ import annotations

import functools

import pytest
import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from distcl.losses import ntxent_loss
from distcl.models.heads import mlp
from distcl.models.text import TextEncoder, build_text_encoder
from distcl.runtime import dist
from tests.losses.multiproc import rel_err, spawn_ranks


def _ids(batch: int, length: int, seed: int = 0, min_len: int = 1) -> Tensor:
    """`batch x length` byte ids, each row a random text of min_len..length tokens, then 0s."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 257, (batch, length), generator=gen)
    lengths = torch.randint(min_len, length + 1, (batch,), generator=gen)
    ids[torch.arange(length) >= lengths[:, None]] = 0
    return ids


def _small(dropout: float = 0.1, seed: int = 0) -> TextEncoder:
    torch.manual_seed(seed)
    return build_text_encoder(width=32, layers=2, heads=4, max_len=40, dropout=dropout)


def test_output_shape_and_feature_size():
    enc = _small()
    assert enc(_ids(5, 17)).shape == (5, 32)
    assert enc.feat_dim == enc.out_dim == 32
    default = build_text_encoder()
    assert default.feat_dim == 128 and default.max_len == 128
    assert default(_ids(2, 96)).shape == (2, 128)


@pytest.mark.parametrize("no_grad", [True, False])
def test_appending_padding_leaves_the_embedding_unchanged(no_grad):
    enc = _small().eval()
    ids = _ids(6, 20, seed=1)
    longer = torch.cat([ids, torch.zeros(6, 13, dtype=torch.int64)], dim=1)
    with torch.set_grad_enabled(not no_grad):  # eval + no_grad takes torch's fast path
        short, long = enc(ids), enc(longer)
    assert (short - long).abs().max().item() <= 1e-5


@pytest.mark.parametrize("train", [True, False])
def test_an_all_padding_row_is_finite_and_pools_to_zero(train):
    enc = _small().train(train)
    ids = _ids(4, 12, seed=2)
    ids[2] = 0
    out = enc(ids)
    assert torch.isfinite(out).all()
    assert out[2].abs().max().item() == 0.0
    out.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in enc.parameters() if p.grad is not None)


def test_dropout_differs_in_train_mode_and_not_in_eval_mode():
    enc = _small(dropout=0.1)
    ids = _ids(4, 16, seed=3)
    assert (enc(ids) - enc(ids)).abs().max().item() > 1e-4  # SimCSE's two views
    enc.eval()
    torch.testing.assert_close(enc(ids), enc(ids), rtol=0, atol=0)


def test_gradients_reach_the_token_and_position_embeddings():
    enc = _small()
    ids = _ids(4, 16, seed=4, min_len=3)
    enc(ids).pow(2).sum().backward()
    used = ids[ids != 0].unique()
    assert (enc.token.weight.grad[used].abs().sum(dim=1) > 0).all()
    assert enc.token.weight.grad[0].abs().max().item() == 0.0  # padding never trains
    assert enc.position.grad[:3].abs().sum().item() > 0
    assert all(p.grad is not None for p in enc.parameters())  # DDP needs every parameter used


def test_bf16_autocast_gives_finite_float32_features_close_to_fp32():
    enc = _small(dropout=0.0).eval()
    ids = _ids(8, 24, seed=5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = enc(ids)
    assert low.dtype == torch.float32 and torch.isfinite(low).all()
    full = enc(ids)
    cos = torch.nn.functional.cosine_similarity(low, full, dim=1)
    assert cos.min().item() > 0.99, cos


def test_bad_inputs_and_sizes_are_named():
    enc = _small()
    with pytest.raises(ValueError, match="exceed the text encoder's max_len=40"):
        enc(_ids(2, 41))
    with pytest.raises(ValueError, match="B x L"):
        enc(torch.ones(3, dtype=torch.int64))
    with pytest.raises(ValueError, match="width=30 must be divisible by heads=4"):
        build_text_encoder(width=30, heads=4)
    with pytest.raises(ValueError, match="dropout must be in"):
        build_text_encoder(dropout=1.0)


# --- NT-Xent over (view a, view b) text embeddings: world sizes 1, 2, 4 -------------------------

N_GLOBAL = 8  # texts in the global batch, divisible by every world size
LENGTH = 12  # tokens per text, padding included
TEMPERATURE = 0.3


def _global_views() -> list[Tensor]:
    """Two different texts per item (dropout is off, so the views must differ in their ids)."""
    return [_ids(N_GLOBAL, LENGTH, seed=10 + v, min_len=2) for v in range(2)]


def _model() -> nn.Sequential:
    """TextEncoder + projection head in float64, without dropout and without BatchNorm: BN's
    statistics are per rank (no SyncBatchNorm on CPU), so its forward differs across world
    sizes by design (SimCLR's local BN); every other part must be exact."""
    torch.manual_seed(0)
    encoder = build_text_encoder(width=16, layers=2, heads=2, max_len=LENGTH, dropout=0.0)
    return nn.Sequential(encoder, mlp(16, 32, 8, hidden_bn=False)).double()


def _rank_record() -> dict:
    """This rank's loss and DDP-averaged parameter gradients on its rows of the global batch
    (a plain process is rank 0 of 1, without DDP)."""
    rank, world = dist.get_rank(), dist.get_world_size()
    rows = slice(rank * N_GLOBAL // world, (rank + 1) * N_GLOBAL // world)
    model = _model()
    net = DistributedDataParallel(model) if world > 1 else model
    a, b = (v[rows] for v in _global_views())
    z = net(torch.cat([a, b]))  # 2B x 8, both views in one batch as SimCLR does
    loss = ntxent_loss(list(z.chunk(2)), temperature=TEMPERATURE)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    return {"loss": loss.item(), "grads": grads}


def _reference_loss(za: Tensor, zb: Tensor) -> Tensor:
    """Naive NT-Xent: for each of the 2N rows, -log softmax of its other view over all other
    rows (Chen et al. 2020, eq. 1), averaged."""
    z = torch.nn.functional.normalize(torch.cat([za, zb]), dim=1)
    sim = z @ z.T / TEMPERATURE
    n = len(za)
    total = z.new_zeros(())
    for i in range(2 * n):
        others = [k for k in range(2 * n) if k != i]
        total = total + torch.logsumexp(sim[i, others], dim=0) - sim[i, (i + n) % (2 * n)]
    return total / (2 * n)


def _reference() -> dict:
    model = _model()
    a, b = _global_views()
    loss = _reference_loss(model(a), model(b))
    loss.backward()
    return {"loss": loss.item(), "grads": {n: p.grad for n, p in model.named_parameters()}}


@functools.cache
def _world(world: int) -> list[dict]:
    return spawn_ranks(world, _rank_record)


def _assert_same(got: dict, want: dict, what: str, rtol: float = 1e-9) -> None:
    assert rel_err(got["loss"], want["loss"]) <= rtol, (what, got["loss"], want["loss"])
    assert got["grads"].keys() == want["grads"].keys()
    for name, g in want["grads"].items():
        err = rel_err(got["grads"][name], g)
        assert err <= rtol, f"{what}: gradient of {name} off by {err:.2e}"
    assert any(g.abs().max() > 0 for n, g in want["grads"].items() if n.startswith("0.token"))


def test_single_process_matches_the_float64_reference():
    _assert_same(_rank_record(), _reference(), "world size 1 vs reference")


@pytest.mark.parametrize("world", [2, 4])
def test_gloo_ranks_under_ddp_match_the_single_process(world):
    single = _rank_record()
    ranks = _world(world)
    for r, rec in enumerate(ranks):
        # The loss of the global batch is the mean of the local losses (each the mean over
        # its anchors); DDP's averaged gradients are the single-process gradients on every rank.
        got = {"loss": sum(x["loss"] for x in ranks) / world, "grads": rec["grads"]}
        _assert_same(got, single, f"world size {world}, rank {r}")
