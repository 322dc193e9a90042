"""How many sweep trials run at once, and with which resources, on the Ray cluster at hand.

A trial is a Ray Train worker group plus a driver that only waits (TRIAL_CPU). `plan_resources`
is pure: it takes what the cluster offers (`Cluster`) and what a trial asks for, and returns the
CPUs per worker and the concurrency (`Plan`) so that every running trial's workers fit; GPUs
(one per worker with train.use_gpu) are never shrunk. `cluster_now` reads the live cluster.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from distcl.config.schema import ConfigError

TRIAL_CPU = 0.01  # the trial driver's CPU share; Tune rejects {"cpu": 0}
MIN_CPUS_PER_WORKER = 0.1  # below this a worker group fits but makes no progress


class Cluster(NamedTuple):
    """What the Ray cluster offers a sweep when it starts (`ray.cluster_resources()`)."""

    cpus: float  # CPUs the cluster has now
    gpus: float  # GPUs the cluster has now
    autoscaling: bool = False  # nodes are added on demand: today's totals are no limit


class Plan(NamedTuple):
    cpus_per_worker: float  # train.cpus_per_worker the trials get
    concurrent: int  # trials running at once; Tune queues the rest


def _fits(cluster: Cluster, cpus: float, gpus: int) -> int:
    """Trials of `cpus` CPUs and `gpus` GPUs each that the cluster's nodes hold at once now."""
    n = int((cluster.cpus + 1e-9) // cpus)
    return min(n, int(cluster.gpus // gpus)) if gpus else n


def _autoscaling_plan(
    cluster: Cluster,
    num_workers: int,
    cpus_per_worker: float,
    gpus: int,
    max_concurrent: int,
    num_trials: int,
) -> Plan:
    """The requested sizes, and `max_concurrent` trials (0: what the nodes up now fit, >= 1)."""
    per_trial = TRIAL_CPU + num_workers * cpus_per_worker
    concurrent = max_concurrent or max(1, _fits(cluster, per_trial, gpus))
    why = "" if max_concurrent else ": what fits now, at least 1; set it in the space for more"
    print(
        f"distcl: the Ray cluster autoscales ({cluster.cpus:g} CPUs, {cluster.gpus:g} GPUs "
        f"up now); each trial asks for train.num_workers={num_workers} workers of "
        f"train.cpus_per_worker={cpus_per_worker:g} CPUs{' and 1 GPU' if gpus else ''}; "
        f"running {concurrent} trial(s) at a time (max_concurrent={max_concurrent}{why})"
    )
    return Plan(cpus_per_worker, min(concurrent, num_trials or concurrent))


def plan_resources(
    cluster: Cluster,
    *,
    num_workers: int,
    cpus_per_worker: float,
    use_gpu: bool,
    max_concurrent: int,
    num_trials: int,
) -> Plan:
    """CPUs per worker and concurrent trials so that every running trial's worker group fits.

    A trial needs TRIAL_CPU + num_workers x cpus_per_worker CPUs and, with train.use_gpu,
    num_workers GPUs (Ray Train's one per worker, never lowered). On a fixed cluster, workers
    that do not fit are shrunk to fractional CPUs (DESIGN: 0.5 lets two 2-worker trials share
    2 cores) and concurrency is capped at what fits, so Tune queues the rest instead of starting
    trial drivers whose worker groups would wait forever. An autoscaling cluster may have no
    worker nodes yet: its trials get the requested sizes and `max_concurrent` (0: what the
    current nodes fit, at least 1), and the autoscaler adds nodes as their workers ask.
    """
    gpus = num_workers if use_gpu else 0  # per trial
    per_trial = TRIAL_CPU + num_workers * cpus_per_worker
    if cluster.autoscaling:
        return _autoscaling_plan(
            cluster, num_workers, cpus_per_worker, gpus, max_concurrent, num_trials
        )
    scale_hint = "; if the cluster adds nodes on demand, pass --autoscaling"
    if gpus > cluster.gpus:
        fix = "set train.use_gpu=false"
        if cluster.gpus >= 1:
            fix = f"lower train.num_workers to {int(cluster.gpus)}"
        raise ConfigError(
            f"train.num_workers={num_workers} with train.use_gpu=true needs {gpus} GPUs per "
            f"trial, but the Ray cluster has {cluster.gpus:g}; {fix}{scale_hint}"
        )
    if per_trial > cluster.cpus + 1e-9:
        fitted = math.floor((cluster.cpus - TRIAL_CPU) / num_workers * 100) / 100
        if fitted < MIN_CPUS_PER_WORKER:
            raise ConfigError(
                f"train.num_workers={num_workers} cannot fit on {cluster.cpus:g} Ray CPUs (each "
                f"worker needs >= {MIN_CPUS_PER_WORKER} CPU); lower train.num_workers{scale_hint}"
            )
        print(
            f"distcl: train.cpus_per_worker={cpus_per_worker:g} x {num_workers} workers does "
            f"not fit {cluster.cpus:g} CPUs; using train.cpus_per_worker={fitted:g}"
        )
        cpus_per_worker, per_trial = fitted, TRIAL_CPU + num_workers * fitted
    fits = max(1, _fits(cluster, per_trial, gpus))
    wanted = max_concurrent or fits
    if wanted > fits:
        need = f"{per_trial:g} CPUs" + (f" and {gpus} GPUs" if gpus else "")
        have = f"{cluster.cpus:g} CPUs" + (f" and {cluster.gpus:g} GPUs" if gpus else "")
        print(
            f"distcl: max_concurrent={wanted} but only {fits} trial(s) of {need} fit {have}; "
            f"running {fits} at a time, the rest queue"
        )
    return Plan(cpus_per_worker, max(1, min(wanted, fits, num_trials or fits)))


def _autoscaler_can_grow() -> bool:
    """Whether an autoscaler published node groups that can grow: the GCS cluster config that
    Ray Train's own worker-group fit check and Ray Data's autoscaling check read. Ray 2.60's
    open-source autoscalers (cluster launcher, KubeRay) do not publish it, hence `--autoscaling`."""
    try:
        from ray._private.state import state

        config = state.get_cluster_config()
    except Exception:  # a private API: gone or changed means "not known to autoscale"
        return False
    return groups_can_grow(config.node_group_configs if config else [])


def groups_can_grow(groups) -> bool:
    """Whether any node group with resources may grow: `max_count` -1 (no limit) or above its
    `min_count` (fields of Ray's `autoscaler_pb2.NodeGroupConfig`)."""
    return any(
        g.max_count == -1 or g.max_count > g.min_count
        for g in groups
        if g.resources and g.max_count
    )


def cluster_now(autoscaling: bool) -> Cluster:
    """The connected Ray cluster's CPUs and GPUs now, and whether it adds nodes on demand
    (`autoscaling`: the user said so with --autoscaling)."""
    import ray

    total = ray.cluster_resources()
    return Cluster(
        cpus=float(total.get("CPU", 0)),
        gpus=float(total.get("GPU", 0)),
        autoscaling=autoscaling or _autoscaler_can_grow(),
    )
