"""MLflow tracking, the writing side: one run per job, created by the driver, logged into by id.

The driver creates the run (so its id exists before any worker starts and survives restarts);
rank 0 of the worker group logs per-epoch metrics into it through `RunLogger`, and the driver
logs the final evaluation. Everything goes through `MlflowClient` with an explicit run id, so
no process depends on mlflow's global "active run"; the few mlflow calls that only read the
global tracking URI run inside `uri.global_uri(uri)`.

The package is the only mlflow importer. Its modules, by responsibility:
uri.py (which store, secrets masked), core.py (this: experiments, runs, `RunLogger`),
runs.py (finding runs and reading artifacts), models.py (the encoder as an MLflow model),
review.py (what the MLflow UI shows a reviewer). The other stages import this module only,
`from distcl.tracking import core as tracking`, so the names they call are listed in `__all__`.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from distcl.tracking.models import load_encoder, log_encoder
from distcl.tracking.review import context_tags, mark_training, training_tags
from distcl.tracking.runs import (
    TrackingError,
    find_experiment,
    find_runs,
    get_run,
    read_artifact_text,
    search_runs,
)
from distcl.tracking.uri import (
    DEFAULT_URI,
    check_reachable,
    is_local_uri,
    mask_secrets,
    resolve_uri,
    safe_params,
    uri_origin,
)

__all__ = [  # what the other stages call as `tracking.NAME`
    "DEFAULT_URI",
    "RunLogger",
    "TrackingError",
    "check_reachable",
    "experiment_id",
    "experiment_name",
    "find_experiment",
    "find_runs",
    "get_run",
    "git_commit",
    "is_local_uri",
    "load_encoder",
    "log_encoder",
    "log_figure",
    "mask_secrets",
    "read_artifact_text",
    "resolve_uri",
    "safe_params",
    "search_runs",
    "start_run",
    "uri_origin",
]


def experiment_name(cfg) -> str:
    """The run's MLflow experiment, in MLflow's order: `tracking.experiment`, else
    $MLFLOW_EXPERIMENT_NAME, else one experiment per dataset, `distcl-<dataset>`.
    The one place that default is written: every stage asks here."""
    return (
        cfg.tracking.experiment
        or os.environ.get("MLFLOW_EXPERIMENT_NAME", "")
        or f"distcl-{cfg.data.dataset}"
    )


def git_commit() -> str:
    cmd, here = ["git", "rev-parse", "HEAD"], Path(__file__).parent
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=5, cwd=here)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


class RunLogger:
    """Logs into one existing MLflow run by id; safe to create in any process."""

    def __init__(self, uri: str, run_id: str):
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=uri)
        self.uri = uri
        self.run_id = run_id
        self._monitor = None

    @property
    def experiment_id(self) -> str:
        return self.client.get_run(self.run_id).info.experiment_id

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        self.client.log_batch(self.run_id, metrics=batch)

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in safe_params(params).items()]
        for i in range(0, len(items), 90):  # the server caps a batch at 100 params
            self.client.log_batch(self.run_id, params=items[i : i + 90])

    def log_params_once(self, params: dict[str, Any]) -> None:
        """Log the params the run does not have yet: a resumed run keeps its first values
        (MLflow refuses to change a logged param)."""
        have = self.client.get_run(self.run_id).data.params
        new = {k: v for k, v in params.items() if k not in have}
        if new:
            self.log_params(new)

    def set_tags(self, tags: dict[str, Any]) -> None:
        for k, v in tags.items():
            self.client.set_tag(self.run_id, k, str(v))

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def metric_history(self, key: str) -> list[tuple[int, float]]:
        return [(m.step, m.value) for m in self.client.get_metric_history(self.run_id, key)]

    def start_system_metrics(self, interval_s: float = 10.0) -> bool:
        """Sample CPU, memory, disk, network (and GPU where pynvml sees one) into `system/*`
        metrics every `interval_s`, from a thread of this process, until `end()`. mlflow's
        monitor takes run id and URI explicitly: no active run needed; resumes its step count."""
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor as Monitor

        try:
            kw = {"sampling_interval": interval_s, "resume_logging": True, "tracking_uri": self.uri}
            self._monitor = Monitor(self.run_id, **kw)
            self._monitor.start()
        except Exception as exc:  # psutil missing or the store refuses: training goes on
            print(f"distcl: system metrics are off ({type(exc).__name__}: {exc})")
            self._monitor = None
        return self._monitor is not None

    def reopen(self) -> None:
        """Mark the run RUNNING again: a `--resume` continues a run that ended FAILED."""
        self.client.update_run(self.run_id, status="RUNNING")

    def end(self, status: str = "FINISHED") -> None:
        if self._monitor is not None:
            self._monitor.finish()  # flushes the last samples while the run still accepts them
            self._monitor = None
        self.client.set_terminated(self.run_id, status=status)


def experiment_id(uri: str, name: str) -> str:
    """The id of experiment `name`, created if missing, tagged as model training (see
    tracking_review); a SQLite store keeps the artifacts of new experiments next to its
    database (mlflow's default is ./mlruns of whatever cwd)."""
    from mlflow.tracking import MlflowClient

    client, exp = MlflowClient(tracking_uri=uri), find_experiment(uri, name)
    if exp:
        mark_training(client, exp)  # experiments made before distcl set the tag, or by others
        return exp.experiment_id
    db = Path(uri[len("sqlite:///") :]).parent if uri.startswith("sqlite:///") else None
    where = str((db / "mlartifacts").resolve()) if db else None
    return client.create_experiment(name, where, tags=training_tags())


def start_run(
    uri: str,
    experiment: str,
    run_name: str,
    params: dict[str, Any],
    tags: dict[str, Any],
    config_yaml: str = "",
    *,
    system_metrics: bool | None = None,
) -> RunLogger:
    """Create a run in `experiment` with params, tags and the resolved config as an artifact.

    System metrics are sampled for the run's lifetime when `system_metrics` is true; None takes
    `tracking.system_metrics` / `tracking.system_metrics_interval` from the flat `params`.
    """
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    tags = context_tags({k: str(v) for k, v in tags.items()})  # user, source, git commit
    run = client.create_run(experiment_id(uri, experiment), run_name=run_name, tags=tags)
    logger = RunLogger(uri, run.info.run_id)
    logger.log_params(params)
    if config_yaml:
        logger.log_text(config_yaml, "config.yaml")
    if system_metrics is None:
        system_metrics = bool(params.get("tracking.system_metrics", False))
    if system_metrics:
        logger.start_system_metrics(float(params.get("tracking.system_metrics_interval", 10.0)))
    return logger


def log_figure(logger: RunLogger, fig: Any, artifact_file: str) -> None:
    """Save a matplotlib figure as the run's artifact `artifact_file` (e.g. plots/curves.png)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(artifact_file).name
        fig.savefig(path, dpi=110, bbox_inches="tight")
        logger.log_artifact(path, str(Path(artifact_file).parent) if "/" in artifact_file else None)
