"""World-size harness for the methods' distributed pieces: ONE spawn of 2 gloo ranks checks
SwAV's Sinkhorn (with queue columns) and swapped-prediction loss, SwAV's queue, Barlow Twins'
loss, MoCo v3's batch contrast and MoCo v2's key queue. World size 1 is the same functions in
the test process without a process group. Each rank holds rows `[r*B, (r+1)*B)` of the global
batch that the single process sees whole; data are float64 for exact comparisons.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from distcl.models.barlow import barlow_twins_loss
from distcl.models.encoders import SmallCNN
from distcl.models.moco import KeyQueue, batch_contrast
from distcl.models.swav import SwAV, sinkhorn, swapped_prediction
from distcl.runtime import dist
from tests.losses.multiproc import spawn_ranks

N = 8  # global batch
D = 6  # embedding width
K = 5  # SwAV prototypes
Q = 4  # SwAV queue columns in the Sinkhorn check
QUEUE = 12  # MoCo queue length: two steps of 8 keys wrap around
STEPS = 3  # MoCo / SwAV enqueue steps


def global_data() -> dict[str, Tensor]:
    """The global batch every world size slices: fixed seeds, float64."""
    g = torch.Generator().manual_seed(7)
    protos = F.normalize(torch.randn(K, D, generator=g, dtype=torch.float64), dim=1)
    z = F.normalize(torch.randn(Q + N, D, generator=g, dtype=torch.float64), dim=1)
    return {
        "queue_scores": z[:Q] @ protos.T,  # Q x K
        "scores": z[Q:] @ protos.T,  # N x K
        "pred_scores": torch.randn(N, K, generator=g, dtype=torch.float64),
        "z1": torch.randn(N, D, generator=g, dtype=torch.float64) * 2 + 1,
        "z2": torch.randn(N, D, generator=g, dtype=torch.float64) - 0.5,
        "keys": torch.randn(STEPS, N, D, generator=g, dtype=torch.float64),
    }


def _rows(x: Tensor) -> Tensor:
    """This rank's rows of a global tensor (all of it at world size 1)."""
    w, r = dist.get_world_size(), dist.get_rank()
    return torch.tensor_split(x, w)[r]


def _leaf(x: Tensor) -> Tensor:
    return _rows(x).clone().requires_grad_(True)


def run_checks() -> dict[str, Any]:
    """What one rank computes; at world size 1 (no process group) the single-process result."""
    data = global_data()
    out: dict[str, Any] = {}
    # SwAV: codes for the batch rows, with this rank's queue columns prepended.
    columns = torch.cat([_rows(data["queue_scores"]), _rows(data["scores"])])
    out["codes"] = sinkhorn(columns, epsilon=0.05, iters=3)[-len(_rows(data["scores"])) :]
    pred = _leaf(data["pred_scores"])
    loss = swapped_prediction(out["codes"], [pred], temperature=0.1)
    loss.backward()
    out["swav_loss"], out["swav_grad"] = loss.item(), pred.grad
    # SwAV's queue through the module: gathered embeddings, identical on every rank.
    torch.manual_seed(0)
    swav = SwAV(
        SmallCNN(1, 2),
        hidden=8,
        dim=D,
        prototypes=K,
        temperature=0.1,
        epsilon=0.05,
        sinkhorn_iters=3,
        queue_size=QUEUE,
        queue_start_epoch=0,
        freeze_prototypes_epochs=0,
    ).double()
    for step in range(STEPS):
        swav._enqueue([_rows(data["keys"][step]), _rows(-data["keys"][step])])
    out["swav_queue"] = swav.queue.clone()
    out["swav_columns"] = swav._queue_columns(0).clone()
    # Barlow Twins: the global loss on every rank, gradients for this rank's rows.
    z1, z2 = _leaf(data["z1"]), _leaf(data["z2"])
    loss = barlow_twins_loss(z1, z2, lambd=0.05)
    loss.backward()
    out["barlow_loss"], out["barlow_grads"] = loss.item(), [z1.grad, z2.grad]
    # MoCo v3: queries with gradient against the gathered keys.
    q = _leaf(data["z1"])
    loss = batch_contrast(q, _rows(data["z2"]), temperature=0.2)
    loss.backward()
    out["moco3_loss"], out["moco3_grad"] = loss.item(), q.grad
    # MoCo v2: the key queue after STEPS enqueues (wraps around at QUEUE).
    torch.manual_seed(0)
    queue = KeyQueue(D, QUEUE).double()
    for step in range(STEPS):
        queue.enqueue(_rows(data["keys"][step]))
    out["moco_queue"], out["moco_ptr"] = queue.keys.clone(), int(queue.ptr)
    return out


@functools.cache
def world_results(world: int) -> list[dict[str, Any]]:
    """Spawn `world` gloo ranks once per session; each rank's record, in rank order."""
    return spawn_ranks(world, run_checks)
