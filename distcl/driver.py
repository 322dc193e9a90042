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

from distcl import __version__, checkpoint, tracking
from distcl.config import Config
from distcl.data import beton


def prepare_data(cfg: Config) -> dict[str, Any]:
    """Write (or reuse) the train and test `.beton`s; returns their paths and the dataset facts."""
    d = cfg.data
    train_path, meta, _ = beton.prepare(d.dataset, d.split, root=d.root, out=d.beton_dir,
                                        max_images=d.max_images)
    eval_split = "train" if d.split == "unlabeled" else d.split
    train_eval_path, _, _ = beton.prepare(d.dataset, eval_split, root=d.root, out=d.beton_dir,
                                          max_images=d.max_images)
    test_path, _, _ = beton.prepare(d.dataset, "test", root=d.root, out=d.beton_dir)
    return {
        "train_path": str(train_path.resolve()),
        "train_eval_path": str(train_eval_path.resolve()),
        "test_path": str(test_path.resolve()),
        "meta": {k: meta[k] for k in ("channels", "num_classes", "resolution", "count")},
    }


def _run_dir_name(cfg: Config, storage: Path, resume: bool) -> str:
    """A fresh directory per run; `--resume` picks the newest one of the same run name."""
    if resume:
        existing = sorted(storage.glob(f"{cfg.run_name}-2*"), key=lambda p: p.stat().st_mtime)
        if existing:
            return existing[-1].name
        print(f"distcl: nothing to resume under {storage}/{cfg.run_name}-*; starting fresh")
    return f"{cfg.run_name}-{time.strftime('%Y%m%d-%H%M%S')}"


def _open_tracking(cfg: Config, uri: str, run_file: Path, data: dict) -> tracking.RunLogger:
    if run_file.exists():
        run_id = json.loads(run_file.read_text())["mlflow_run_id"]
        print(f"distcl: continuing MLflow run {run_id}")
        return tracking.RunLogger(uri, run_id)
    tags = {
        "method": cfg.method.name, "loss": cfg.loss.name, "dataset": cfg.data.dataset,
        "role": "baseline" if cfg.method.name == "supervised" else "method",
        "git_commit": tracking.git_commit(), "distcl_version": __version__,
        "world_size": cfg.train.num_workers,
    }
    experiment = cfg.tracking.experiment or f"distcl-{cfg.data.dataset}"
    logger = tracking.start_run(uri, experiment, cfg.run_name, cfg.to_flat(), tags, cfg.to_yaml())
    run_file.parent.mkdir(parents=True, exist_ok=True)
    run_file.write_text(json.dumps({"mlflow_run_id": logger.run_id, "data": data}))
    return logger


def fit(cfg: Config, *, resume: bool = False, summary_json: str | None = None) -> dict[str, Any]:
    """Train with Ray Train, evaluate in the driver, log to MLflow; returns the summary."""
    from distcl.final_eval import final_evaluation, print_table
    from distcl.preflight import preflight
    from distcl.train import ensure_ray, run_trainer

    uri = tracking.resolve_uri(cfg.tracking.uri)
    storage = Path(cfg.train.storage_path).resolve()
    preflight(cfg, uri, storage)
    data = prepare_data(cfg)
    name = _run_dir_name(cfg, storage, resume)
    logger = _open_tracking(cfg, uri, storage / name / "distcl_run.json", data) \
        if cfg.tracking.enabled else None
    ensure_ray()
    loop_cfg = {"config": cfg.to_flat(), **data, "tracking_uri": uri,
                "mlflow_run_id": logger.run_id if logger else ""}
    t0 = time.perf_counter()
    try:
        result = run_trainer(cfg, loop_cfg, str(storage), name)
    except BaseException:
        if logger:
            logger.end("FAILED")
        raise
    train_s = time.perf_counter() - t0
    with result.checkpoint.as_directory() as ckpt_dir:
        state = checkpoint.load(ckpt_dir)
    results = final_evaluation(cfg, state, data, logger)
    summary = {**results, "mlflow_run_id": logger.run_id if logger else "",
               "train_time_s": train_s, "run_dir": str(storage / name),
               "checkpoint": result.checkpoint.path}
    if logger:
        logger.log_text(json.dumps(summary, indent=1), "summary.json")
        logger.end("FINISHED")
    print_table(cfg.run_name, results)
    if summary_json:
        Path(summary_json).parent.mkdir(parents=True, exist_ok=True)
        Path(summary_json).write_text(json.dumps(summary, indent=1))
    return summary
