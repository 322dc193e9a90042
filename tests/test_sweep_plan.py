"""How `distcl sweep` sizes its trials and where it keeps them, without starting Ray.

`plan_resources` is a pure function of the cluster (CPUs, GPUs, autoscaling) and the run's
needs; the storage helpers take a local folder or a storage URI, exercised here through
`file://` URIs (the same pyarrow path as s3:// / gs://, with no network).
"""

from __future__ import annotations

import argparse
import os

import pytest

from distcl.config import schema as config
from distcl.runtime.storage import read_text, write_text
from distcl.sweep.plan import Cluster, Plan, cluster_now, groups_can_grow, plan_resources
from distcl.sweep.state import SWEEP_FILE, find_resumable, sweep_dir
from distcl.train.loop import scaling_config


def plan(cpus: float, gpus: float = 0, autoscaling: bool = False, **needs) -> Plan:
    run = {"num_workers": 2, "cpus_per_worker": 1.0, "use_gpu": False, "max_concurrent": 0}
    return plan_resources(Cluster(cpus, gpus, autoscaling), num_trials=8, **{**run, **needs})


def test_plan_fits_trials_on_the_cpus():
    assert plan(2.0, cpus_per_worker=0.5) == (0.5, 1)  # 0.01 + 1.0 per trial: one fits
    assert plan(2.0, num_workers=1, cpus_per_worker=0.5) == (0.5, 3)
    assert plan(2.0) == (0.99, 1)  # shrunk so one trial fits at all
    assert plan(2.0, num_workers=1, cpus_per_worker=0.5, max_concurrent=2) == (0.5, 2)
    one_worker = {"num_workers": 1, "cpus_per_worker": 0.5, "use_gpu": False, "max_concurrent": 0}
    assert plan_resources(Cluster(16.0, 0), num_trials=3, **one_worker) == (0.5, 3)  # <= trials
    with pytest.raises(config.ConfigError, match="lower train.num_workers.*--autoscaling"):
        plan(0.0)


def test_gpu_plan_caps_concurrency_by_gpus(capsys):
    # 64 CPUs fit 31 two-worker trials; 8 GPUs only 4 (one GPU per worker)
    assert plan(64.0, 8.0, use_gpu=True) == (1.0, 4)
    assert plan(64.0, 8.0, use_gpu=True, max_concurrent=6) == (1.0, 4)
    assert (
        "only 4 trial(s) of 2.01 CPUs and 2 GPUs fit 64 CPUs and 8 GPUs" in capsys.readouterr().out
    )
    assert plan(64.0, 7.0, use_gpu=True) == (1.0, 3)
    assert plan(2.0, 8.0, use_gpu=True) == (0.99, 1)  # CPUs shrink, GPUs stay one per worker
    with pytest.raises(config.ConfigError) as err:
        plan(64.0, 2.0, num_workers=4, use_gpu=True)
    msg = str(err.value)
    assert "train.num_workers=4 with train.use_gpu=true needs 4 GPUs per trial" in msg
    assert "has 2; lower train.num_workers to 2" in msg and "--autoscaling" in msg
    with pytest.raises(config.ConfigError, match="has 0; set train.use_gpu=false"):
        plan(64.0, 0.0, use_gpu=True)


def test_a_trial_keeps_one_gpu_per_worker():
    """The worker group a GPU trial asks Ray for: the planned CPUs and one GPU per worker."""
    cpw, _ = plan(2.0, 8.0, use_gpu=True)
    cfg = config.load(None, ["train.use_gpu=true", "train.num_workers=2"])
    cfg = config.build({**cfg.to_flat(), "train.cpus_per_worker": cpw})
    scaling = scaling_config(cfg)
    assert scaling._resources_per_worker_not_none == {"CPU": 0.99, "GPU": 1}
    assert scaling.num_workers == 2 and scaling.use_gpu


def test_autoscaling_cluster_with_no_nodes_is_not_refused(capsys):
    # a cluster that scales from zero: nothing up yet, the requested sizes are kept
    assert plan(0.0, 0.0, autoscaling=True, use_gpu=True) == (1.0, 1)
    out = capsys.readouterr().out
    assert "autoscales (0 CPUs, 0 GPUs up now)" in out and "1 trial(s) at a time" in out
    assert plan(0.0, 0.0, autoscaling=True, max_concurrent=3) == (1.0, 3)
    assert plan(0.0, 0.0, autoscaling=True, max_concurrent=20) == (1.0, 8)  # <= trials
    assert plan(8.0, 4.0, autoscaling=True, use_gpu=True) == (1.0, 2)  # what is up now fits 2
    with pytest.raises(config.ConfigError, match="0 Ray CPUs.*pass --autoscaling"):
        plan(0.0, 0.0)  # the same cluster, not known to autoscale


@pytest.mark.slow
def test_cluster_reads_the_live_ray_cluster(ray_session):
    assert cluster_now(False) == Cluster(2.0, 0.0, False)  # conftest's local 2-CPU instance
    assert cluster_now(True) == Cluster(2.0, 0.0, True)  # --autoscaling


def test_node_groups_that_can_grow_mean_autoscaling():
    from ray.core.generated import autoscaler_pb2

    fixed = autoscaler_pb2.NodeGroupConfig(name="gpu", min_count=2, max_count=2)
    fixed.resources["GPU"] = 4
    grows = autoscaler_pb2.NodeGroupConfig(name="gpu", min_count=0, max_count=10)
    grows.resources["GPU"] = 4
    unbounded = autoscaler_pb2.NodeGroupConfig(name="cpu", min_count=0, max_count=-1)
    unbounded.resources["CPU"] = 8
    assert not groups_can_grow([]) and not groups_can_grow([fixed])
    assert groups_can_grow([fixed, grows]) and groups_can_grow([unbounded])


def test_storage_uris_stay_intact(tmp_path, monkeypatch):
    def args(storage_path):
        return argparse.Namespace(storage_path=storage_path)

    assert sweep_dir(args("s3://bucket/sweeps"), "runs") == "s3://bucket/sweeps"
    assert sweep_dir(args(None), "gs://bucket/runs/") == "gs://bucket/runs"
    monkeypatch.chdir(tmp_path)
    assert sweep_dir(args(None), "runs") == str(tmp_path / "runs")  # local: absolute

    root = f"file://{tmp_path}/sweeps"  # a URI that pyarrow serves without network
    write_text(f"{root}/old/{SWEEP_FILE}", '{"name": "old"}')
    write_text(f"{root}/new/{SWEEP_FILE}", '{"name": "new"}')
    write_text(f"{root}/no-sweep/other.json", "{}")
    os.utime(tmp_path / "sweeps" / "old" / SWEEP_FILE, (1e9, 1e9))
    assert find_resumable(root, "old") == f"{root}/old"
    assert find_resumable(root, None) == f"{root}/new"  # the newest record
    assert read_text(f"{find_resumable(root, None)}/{SWEEP_FILE}") == '{"name": "new"}'
    with pytest.raises(config.ConfigError, match="no sweep at file://.*/sweeps/gone"):
        find_resumable(root, "gone")
    with pytest.raises(config.ConfigError, match="no sweep under file://"):
        find_resumable(f"file://{tmp_path}/empty", None)
