"""World size 2 (real gloo processes) against world size 1 on the same global batch."""

from __future__ import annotations

import torch

from tests.losses.multiproc import rel_err

from .worlds import run_checks, world_results

WORLD = 2
RTOL = 1e-10


def _single():
    return run_checks()  # no process group here: world size 1


def test_swav_sinkhorn_codes_match_single_process():
    single, ranks = _single(), world_results(WORLD)
    got = torch.cat([r["codes"] for r in ranks])  # rank order = global row order
    assert rel_err(got, single["codes"]) <= RTOL
    assert torch.allclose(single["codes"].sum(1), torch.ones(len(got), dtype=got.dtype))
    # The equipartition is not trivial: codes differ between rows.
    assert single["codes"].std(0).max() > 1e-3


def test_swav_loss_and_gradient_match_single_process():
    single, ranks = _single(), world_results(WORLD)
    mean_loss = sum(r["swav_loss"] for r in ranks) / WORLD  # what DDP trains on
    assert rel_err(mean_loss, single["swav_loss"]) <= RTOL
    got = torch.cat([r["swav_grad"] for r in ranks]) / WORLD  # DDP averages over ranks
    assert rel_err(got, single["swav_grad"]) <= RTOL


def test_swav_queue_is_global_and_split_across_ranks():
    single, ranks = _single(), world_results(WORLD)
    for r in ranks:
        assert torch.equal(r["swav_queue"], single["swav_queue"])
    union = torch.cat([r["swav_columns"] for r in ranks])
    assert torch.equal(union, single["swav_columns"])


def test_barlow_loss_and_gradients_match_single_process():
    single, ranks = _single(), world_results(WORLD)
    for r in ranks:  # every rank computes the global loss
        assert rel_err(r["barlow_loss"], single["barlow_loss"]) <= RTOL
    for v in range(2):
        got = torch.cat([r["barlow_grads"][v] for r in ranks]) / WORLD
        assert rel_err(got, single["barlow_grads"][v]) <= RTOL, f"view {v}"


def test_moco_v3_contrast_matches_single_process():
    single, ranks = _single(), world_results(WORLD)
    assert rel_err(sum(r["moco3_loss"] for r in ranks) / WORLD, single["moco3_loss"]) <= RTOL
    got = torch.cat([r["moco3_grad"] for r in ranks]) / WORLD
    assert rel_err(got, single["moco3_grad"]) <= RTOL


def test_moco_queue_identical_on_every_rank_and_equal_to_single_process():
    single, ranks = _single(), world_results(WORLD)
    for r in ranks:
        assert torch.equal(r["moco_queue"], single["moco_queue"])
        assert r["moco_ptr"] == single["moco_ptr"] == (3 * 8) % 12
