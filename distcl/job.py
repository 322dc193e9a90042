"""One `distcl train` run from the driver's side: data, tracking, Ray Train, final evaluation.

Order matters: everything cheap that can be wrong (config, data files, storage, tracking server,
CPUs) is checked before Ray starts; the MLflow run is created before the workers so its id
survives worker restarts; the evaluation runs in the driver on the final checkpoint.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from distcl import __version__
from distcl.config.schema import Config, ConfigError
from distcl.data import beton
from distcl.runtime import checkpoint
from distcl.runtime.storage import filesystem
from distcl.tracking import core as tracking
from distcl.tracking import review as tracking_review

RUN_FILE = "distcl_run.json"  # per run directory: the MLflow run id, so a resume logs into it


def prepare_data(cfg: Config) -> dict[str, Any]:
    """Write (or reuse) the train and test `.beton`s; returns their paths and the dataset facts."""
    d = cfg.data
    kw = {
        "root": d.root,
        "out": d.beton_dir,
        "rebuild_invalid": False,
        "download": d.download,
        "write_mode": d.storage,
        "max_resolution": d.max_resolution,
        "jpeg_quality": d.jpeg_quality,
    }
    train_path, meta, _ = beton.prepare(d.dataset, d.split, max_images=d.max_images, **kw)
    # kNN bank and probe need labels: STL-10's unlabeled images have none
    eval_split = "train" if "unlabeled" in d.split else d.split
    train_eval_path, _, _ = beton.prepare(d.dataset, eval_split, max_images=d.max_images, **kw)
    test_path, _, _ = beton.prepare(d.dataset, "test", **kw)
    if d.resolution > meta["resolution"]:
        raise ConfigError(
            f"data.resolution={d.resolution} is larger than the stored images ({meta['resolution']}"
            f" px in {train_path}); use data.resolution<={meta['resolution']}, or re-run distcl "
            "prepare with a larger --max-resolution"
        )
    return {
        "train_path": str(train_path.resolve()),
        "train_eval_path": str(train_eval_path.resolve()),
        "test_path": str(test_path.resolve()),
        "meta": {k: meta[k] for k in ("channels", "num_classes", "resolution", "count")},
    }


def _run_dir_name(cfg: Config, storage: str, resume: bool) -> str:
    """A fresh directory per run; `--resume` picks the newest one of the same run name."""
    import pyarrow.fs

    if resume:
        fs, base = filesystem(storage)
        infos = fs.get_file_info(pyarrow.fs.FileSelector(base, allow_not_found=True))
        existing = sorted(
            i.base_name
            for i in infos
            if i.type == pyarrow.fs.FileType.Directory
            and i.base_name.startswith(f"{cfg.run_name}-2")
        )
        if existing:
            print(f"distcl: resuming {storage}/{existing[-1]} from its latest checkpoint")
            return existing[-1]
        print(f"distcl: nothing to resume under {storage}/{cfg.run_name}-*; starting fresh")
    return f"{cfg.run_name}-{time.strftime('%Y%m%d-%H%M%S')}"


def _read_run_file(storage: str, name: str) -> dict | None:
    fs, base = filesystem(storage)
    try:
        with fs.open_input_stream(f"{base}/{name}/{RUN_FILE}") as f:
            return json.loads(f.read())
    except (FileNotFoundError, OSError):
        return None


def _write_run_file(storage: str, name: str, payload: dict) -> None:
    fs, base = filesystem(storage)
    fs.create_dir(f"{base}/{name}", recursive=True)
    with fs.open_output_stream(f"{base}/{name}/{RUN_FILE}") as f:
        f.write(json.dumps(payload).encode())


def _driver_node_id() -> str:
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""


def _open_tracking(cfg: Config, uri: str, storage: str, name: str, data: dict):
    previous = _read_run_file(storage, name)
    if previous:
        print(f"distcl: continuing MLflow run {previous['mlflow_run_id']}")
        logger = tracking.RunLogger(uri, previous["mlflow_run_id"])
        logger.reopen()
        if cfg.tracking.system_metrics:  # the monitor died with the driver it ran in
            logger.start_system_metrics(cfg.tracking.system_metrics_interval)
        return logger
    tags = {
        "method": cfg.method.name,
        "loss": cfg.loss.name,
        "dataset": cfg.data.dataset,
        "role": "baseline" if cfg.method.name == "supervised" else "method",
        "git_commit": tracking.git_commit(),
        "distcl_version": __version__,
        "world_size": cfg.train.num_workers,
        "driver_node_id": _driver_node_id(),  # rank 0's node is the worker_node_ids tag's first
    }
    experiment = tracking.experiment_name(cfg)
    logger = tracking.start_run(uri, experiment, cfg.run_name, cfg.to_flat(), tags, cfg.to_yaml())
    tracking_review.log_datasets(logger, data)  # the runs table's Dataset column
    _write_run_file(storage, name, {"mlflow_run_id": logger.run_id, "data": data})
    return logger


def fit(cfg: Config, *, resume: bool = False, summary_json: str | None = None) -> dict[str, Any]:
    """Train with Ray Train, evaluate in the driver, log to MLflow; returns the summary."""
    from distcl.config.preflight import check_local_tracking, preflight
    from distcl.evaluation.final import final_evaluation, print_table
    from distcl.train.loop import cluster_shape, ensure_ray, run_trainer

    uri = tracking.resolve_uri(cfg.tracking.uri)
    storage = cfg.train.storage_path
    if "://" not in storage:
        storage = str(Path(storage).resolve())
    preflight(cfg, uri, Path(storage))
    data = prepare_data(cfg)
    name = _run_dir_name(cfg, storage, resume)
    ensure_ray()  # connecting is cheap; the MLflow run is created only once the store is usable
    nodes, fits = cluster_shape(cfg)
    check_local_tracking(cfg, uri, nodes=nodes, workers_fit_here=fits)
    logger = _open_tracking(cfg, uri, storage, name, data) if cfg.tracking.enabled else None
    loop_cfg = {
        "config": cfg.to_flat(),
        **data,
        "tracking_uri": uri,
        "mlflow_run_id": logger.run_id if logger else "",
    }
    t0 = time.perf_counter()
    try:
        result = run_trainer(cfg, loop_cfg, storage, name)
    except BaseException:
        if logger:
            logger.end("FAILED")
        raise
    train_s = time.perf_counter() - t0
    with result.checkpoint.as_directory() as ckpt_dir:
        state = checkpoint.load(ckpt_dir)
    results = final_evaluation(cfg, state, data, logger)
    summary = {
        **results,
        "mlflow_run_id": logger.run_id if logger else "",
        "train_time_s": train_s,
        "run_dir": f"{storage}/{name}",
        "checkpoint": result.checkpoint.path,
    }
    if logger:
        logger.log_text(json.dumps(summary, indent=1), "summary.json")
        logger.end("FINISHED")
        tracking_review.after_run(uri, logger.experiment_id, logger.run_id)  # compare table
    print_table(cfg.run_name, results)
    if summary_json:
        Path(summary_json).parent.mkdir(parents=True, exist_ok=True)
        Path(summary_json).write_text(json.dumps(summary, indent=1))
    return summary
