"""distcl.runtime.dist: no-ops in a plain process; real gloo groups of 2 and 4 ranks.

The multi-rank records come from the same single spawn per world size that checks the losses
(tests/losses/multiproc.py), so this file adds no process start-up of its own.
"""

from __future__ import annotations

import pytest
import torch

from distcl.runtime import dist

if __package__:  # tests/ is a package
    from .losses.multiproc import dist_checks, rank_weights, world_results
else:  # pytest's rootdir-relative import: tests/ itself is on sys.path
    from losses.multiproc import dist_checks, rank_weights, world_results


def _rank_input(rank: int) -> torch.Tensor:
    return torch.arange(6, dtype=torch.float64).reshape(3, 2) + 10 * rank


def _check(record: dict, rank: int, world: int) -> None:
    assert record["rank"] == rank and record["world"] == world
    assert record["offset"] == 3 * rank
    everyone = torch.cat([_rank_input(r) for r in range(world)])  # (3W) x 2, rank order
    torch.testing.assert_close(record["gather_no_grad"], everyone, rtol=0, atol=0)
    assert record["gather_no_grad_requires_grad"] is False
    # Each rank r' backpropagates rank_weights(r') through the gather; rank r's rows must get
    # the SUM over ranks of its slice (DDP's 1/W averaging then makes it the mean).
    summed = sum(rank_weights(r, world) for r in range(world))
    torch.testing.assert_close(
        record["gather_with_grad_grad"], summed[3 * rank : 3 * rank + 3], rtol=0, atol=0
    )
    total = sum(_rank_input(r) for r in range(world))
    torch.testing.assert_close(record["all_reduce_sum"], total, rtol=0, atol=0)
    assert record["all_reduce_sum_input_untouched"]
    torch.testing.assert_close(record["all_reduce_with_grad"], total, rtol=0, atol=0)
    # Rank r' scales the sum by (r' + 1); every input receives the sum of those factors.
    factor = world * (world + 1) / 2
    torch.testing.assert_close(
        record["all_reduce_with_grad_grad"], torch.full((3, 2), factor, dtype=torch.float64)
    )
    assert record["mean_scalar"] == pytest.approx((world - 1) / 2)
    assert record["broadcast"] == {"from": world - 1, "items": [world - 1, "x"]}


def test_plain_process_is_a_no_op():
    assert not dist.is_dist()
    assert (dist.get_rank(), dist.get_world_size(), dist.rank_offset(7)) == (0, 1, 0)
    x = torch.randn(3, 2, requires_grad=True)
    assert dist.gather_with_grad(x) is x
    assert dist.all_reduce_with_grad(x) is x
    assert not dist.gather_no_grad(x).requires_grad
    dist.barrier()
    assert dist.broadcast_object({"a": 1}) == {"a": 1}
    record = dist_checks()
    assert record["is_dist"] is False
    _check(record, rank=0, world=1)


@pytest.mark.parametrize("world", [2, 4])
def test_gloo_group(world):
    records = [r["dist"] for r in world_results(world)]
    for rank, record in enumerate(records):
        assert record["is_dist"] is True
        _check(record, rank, world)
