"""One training job end to end, from the driver's side: data, tracking, Ray Train, evaluation.

`run_job` runs a job whose data and MLflow run are ready: Ray Train, the final evaluation in the
driver, `summary.json` and the run's status. `distcl train` calls it through `fit`, and every
`distcl sweep` trial calls it directly (distcl.sweep.trial.trial_fn). In `fit` order matters:
everything cheap that can be wrong (config, data files, storage, tracking server, CPUs) is
checked before Ray starts; the MLflow run is created before the workers so its id survives
worker restarts; the evaluation runs in the driver on the final checkpoint.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, NamedTuple

from distcl import __version__
from distcl.config.schema import Config
from distcl.data.prepare import prepare_data
from distcl.report import experiment as report_experiment
from distcl.runtime import checkpoint
from distcl.runtime.storage import filesystem
from distcl.tracking import core as tracking
from distcl.tracking import review as tracking_review

RUN_FILE = "distcl_run.json"  # per run directory: the MLflow run id, so a resume logs into it


class Job(NamedTuple):
    """What `run_job` returns."""

    results: dict[str, Any]  # the final evaluation: knn_acc, linear_acc, ..., baselines
    summary: dict[str, Any]  # results + mlflow_run_id, train_time_s, run_dir, checkpoint
    train_metrics: dict[str, Any]  # the trainer's last report (Ray's Result.metrics)


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


def run_job(
    cfg: Config,
    data: dict[str, Any],
    *,
    uri: str,
    logger: tracking.RunLogger | None,
    storage: str,
    name: str,
    callbacks: list | None = None,
) -> Job:
    """Train with Ray Train into `storage/name`, evaluate the final checkpoint in the driver, and
    close `logger`'s MLflow run (None: tracking off) with `summary.json`: FINISHED, or FAILED if
    anything raised. `distcl train` and every sweep trial run their job through here."""
    from distcl.evaluation.final import final_evaluation
    from distcl.train.loop import run_trainer

    loop_cfg = {
        "config": cfg.to_flat(),
        **data,
        "tracking_uri": uri,
        "mlflow_run_id": logger.run_id if logger else "",
    }
    try:
        t0 = time.perf_counter()
        result = run_trainer(cfg, loop_cfg, storage, name, callbacks=callbacks)
        train_s = time.perf_counter() - t0
        with result.checkpoint.as_directory() as ckpt_dir:
            state = checkpoint.load(ckpt_dir)
        results = final_evaluation(cfg, state, data, logger)
    except BaseException:
        if logger:
            logger.end("FAILED")
        raise
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
    return Job(results, summary, dict(result.metrics or {}))


def fit(cfg: Config, *, resume: bool = False, summary_json: str | None = None) -> dict[str, Any]:
    """`distcl train`: check, prepare data, open the MLflow run, `run_job`, print the table."""
    from distcl.evaluation.final import print_table
    from distcl.job.preflight import check_local_tracking, preflight
    from distcl.train.loop import cluster_shape, ensure_ray

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
    job = run_job(cfg, data, uri=uri, logger=logger, storage=storage, name=name)
    if logger:
        report_experiment.after_run(uri, logger.experiment_id, logger.run_id)  # compare table
    print_table(cfg.run_name, job.results)
    if summary_json:
        Path(summary_json).parent.mkdir(parents=True, exist_ok=True)
        Path(summary_json).write_text(json.dumps(job.summary, indent=1))
    return job.summary
