"""MLflow tracking: the only module in distcl that imports mlflow.

The driver creates the run (so its id exists before any worker starts and survives restarts);
rank 0 of the worker group logs per-epoch metrics into it through `RunLogger`, and the driver
logs the final evaluation. Everything goes through `MlflowClient` with an explicit run id, so
no process depends on mlflow's global "active run".
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

SECRET_KEY = re.compile(r"(token|password|passwd|secret|api[_-]?key|credential)", re.I)


def resolve_uri(uri: str) -> str:
    """Empty -> $MLFLOW_TRACKING_URI or local SQLite; relative SQLite paths -> absolute.

    Ray workers do not share the driver's working directory, so a relative path would split
    one run across two databases.
    """
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI", "") or "sqlite:///mlflow.db"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str(Path(uri[len("sqlite:///"):]).resolve())
    if "://" not in uri:  # a bare path: MLflow 3 refuses file stores by default, use SQLite
        return "sqlite:///" + str((Path(uri) / "mlflow.db").resolve())
    return uri


def mask_secrets(value: Any) -> Any:
    """Hide `user:password@` in URIs and values of secret-looking keys in strings."""
    if not isinstance(value, str) or "://" not in value:
        return value
    parts = urlsplit(value)
    if parts.password:
        netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
        value = urlunsplit(parts._replace(netloc=netloc))
    return re.sub(r"((?:token|password|secret|key)=)[^&]+", r"\1***", value, flags=re.I)


def safe_params(flat: dict[str, Any]) -> dict[str, Any]:
    return {k: "***" if SECRET_KEY.search(k) else mask_secrets(v) for k, v in flat.items()}


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Raise RuntimeError naming the URI when an HTTP tracking server does not answer."""
    if not uri.startswith(("http://", "https://")):
        return
    import urllib.request

    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout)
    except Exception as exc:
        raise RuntimeError(
            f"MLflow tracking server {mask_secrets(uri)} is unreachable ({type(exc).__name__}). "
            "Start it (mlflow server --host 127.0.0.1 --port 5000 ...) or set tracking.uri to "
            "a reachable server or sqlite:///mlflow.db"
        ) from None


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5, cwd=Path(__file__).parent)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


class RunLogger:
    """Logs into one existing MLflow run by id; safe to create in any process."""

    def __init__(self, uri: str, run_id: str):
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=uri)
        self.run_id = run_id

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        import time

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        self.client.log_batch(self.run_id, metrics=batch)

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in safe_params(params).items()]
        for i in range(0, len(items), 90):  # the server caps a batch at 100 params
            self.client.log_batch(self.run_id, params=items[i : i + 90])

    def set_tags(self, tags: dict[str, Any]) -> None:
        for k, v in tags.items():
            self.client.set_tag(self.run_id, k, str(v))

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def metric_history(self, key: str) -> list[tuple[int, float]]:
        return [(m.step, m.value) for m in self.client.get_metric_history(self.run_id, key)]

    def end(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)


def experiment_id(uri: str, name: str) -> str:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(name)
    return exp.experiment_id if exp else client.create_experiment(name)


def start_run(uri: str, experiment: str, run_name: str, params: dict[str, Any],
              tags: dict[str, Any], config_yaml: str = "") -> RunLogger:
    """Create a run in `experiment` with params, tags and the resolved config as an artifact."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    run = client.create_run(experiment_id(uri, experiment), run_name=run_name,
                            tags={k: str(v) for k, v in tags.items()})
    logger = RunLogger(uri, run.info.run_id)
    logger.log_params(params)
    if config_yaml:
        logger.log_text(config_yaml, "config.yaml")
    return logger


def find_runs(uri: str, experiment: str, filter_string: str = "") -> list[Any]:
    """Runs of `experiment` matching an MLflow filter, newest first."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    return client.search_runs([exp.experiment_id], filter_string=filter_string,
                              order_by=["attributes.start_time DESC"])


def log_figure(logger: RunLogger, fig: Any, artifact_file: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(artifact_file).name
        fig.savefig(path, dpi=110, bbox_inches="tight")
        logger.log_artifact(path, str(Path(artifact_file).parent) if "/" in artifact_file else None)
