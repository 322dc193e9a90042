"""A resumed MoCo v2 run continues with the same queue (and pointer, and key encoder)."""

from __future__ import annotations

import torch

from distcl.models.methods import build_method
from distcl.runtime import checkpoint

from .test_methods import make_batches, tiny_cfg, train_steps


def test_moco_queue_survives_checkpoint_round_trip(tmp_path):
    torch.set_num_threads(1)
    cfg = tiny_cfg("moco_v2", "method.queue_size=80")  # 80 = 2.5 batches: the pointer wraps
    batches = make_batches(2)
    torch.manual_seed(0)
    run = build_method(cfg, 1, 4)
    assert int(run.queue.ptr) == 0
    train_steps(run, batches, steps=3)
    assert int(run.queue.ptr) == (3 * 32) % 80
    checkpoint.save(tmp_path, {"model": run.state_dict()})

    torch.manual_seed(123)  # a fresh module: different random queue and weights
    resumed = build_method(cfg, 1, 4)
    assert not torch.equal(resumed.queue.keys, run.queue.keys)
    resumed.load_state_dict(checkpoint.load(tmp_path)["model"])
    assert torch.equal(resumed.queue.keys, run.queue.keys)
    assert int(resumed.queue.ptr) == int(run.queue.ptr)

    views, labels = batches[0]
    with torch.no_grad():  # one more step's forward on both: same keys, same queue
        loss_run, loss_resumed = run(views, labels), resumed(views, labels)
    assert torch.equal(loss_run, loss_resumed)
    assert torch.equal(resumed.queue.keys, run.queue.keys)
    assert int(resumed.queue.ptr) == int(run.queue.ptr) == (4 * 32) % 80
