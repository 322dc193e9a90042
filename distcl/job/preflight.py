"""Checks of the world before anything expensive starts (Ray, data loading, compilation)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from distcl.config.schema import Config, ConfigError
from distcl.config.validate import tracking_uri_problem


def check_storage(storage: Path) -> None:
    """The checkpoint folder must be creatable and writable (cloud URIs are checked by Ray)."""
    if ":/" in str(storage):  # s3://, gs://: Ray validates these from every node
        return
    try:
        storage.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=storage, prefix=".write-test"):
            pass
    except OSError as exc:
        raise ConfigError(
            f"train.storage_path={storage} is not writable ({exc.strerror}); choose a folder you "
            "can write, e.g. train.storage_path=runs"
        ) from None


def check_cpus(cfg: Config) -> None:
    """More workers than this machine's CPUs would hang waiting for resources; say so now."""
    if os.environ.get("RAY_ADDRESS"):
        return  # a cluster: Ray's autoscaler decides
    cpus = os.cpu_count() or 1
    need = cfg.train.num_workers * cfg.train.cpus_per_worker
    if need > cpus:
        raise ConfigError(
            f"train.num_workers={cfg.train.num_workers} x train.cpus_per_worker="
            f"{cfg.train.cpus_per_worker} needs {need:g} CPUs, but this machine has {cpus}; "
            f"lower train.num_workers or set train.cpus_per_worker={cpus / cfg.train.num_workers:g}"
        )
    if cfg.train.use_gpu:
        import torch

        gpus = torch.cuda.device_count()
        if cfg.train.num_workers > gpus:
            raise ConfigError(
                f"train.num_workers={cfg.train.num_workers} with train.use_gpu=true needs that "
                f"many GPUs, but {gpus} are visible; lower train.num_workers"
            )


def check_tracking_scheme(cfg: Config) -> None:
    """$MLFLOW_TRACKING_URI gets the scheme check that `tracking.uri` got in validation."""
    env = os.environ.get("MLFLOW_TRACKING_URI", "")
    if cfg.tracking.enabled and not cfg.tracking.uri and env:
        problem = tracking_uri_problem(env, "MLFLOW_TRACKING_URI")
        if problem:
            raise ConfigError(problem)


def check_local_tracking(cfg: Config, uri: str, *, nodes: int, workers_fit_here: bool) -> None:
    """A SQLite or file store is a file on one machine: refuse it when ranks may run elsewhere.

    `nodes` is the number of alive Ray nodes; `workers_fit_here` says whether the driver's node
    alone can host every worker (False on a cluster that autoscales from an empty head).
    """
    from distcl.tracking import core as tracking

    if not cfg.tracking.enabled or not tracking.is_local_uri(uri):
        return
    if nodes <= 1 and workers_fit_here:
        return
    where = (
        f"the Ray cluster has {nodes} nodes"
        if nodes > 1
        else "the workers cannot run on the driver's node (the autoscaler will add nodes)"
    )
    raise ConfigError(
        f"{tracking.uri_origin(cfg.tracking.uri)} gives the MLflow store {uri}, a file on this "
        f"machine, but {where}: rank 0 on another node would write to a different file. Run "
        "one MLflow server that every node reaches (mlflow server --host 0.0.0.0 --port 5000 "
        "--backend-store-uri sqlite:////ABS/mlflow.db --artifacts-destination /ABS/artifacts) "
        "and set MLFLOW_TRACKING_URI=http://HEAD:5000, or set tracking.enabled=false"
    )


def preflight(cfg: Config, tracking_uri: str, storage: Path) -> None:
    from distcl.tracking import core as tracking

    check_cpus(cfg)
    check_tracking_scheme(cfg)
    check_storage(storage)
    if cfg.tracking.enabled:
        try:
            tracking.check_reachable(tracking_uri)
        except RuntimeError as exc:
            raise ConfigError(f"tracking.uri: {exc}") from None
