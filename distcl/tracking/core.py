"""MLflow tracking: with tracking_review.py (what the UI shows), the only mlflow importer.

The driver creates the run (so its id exists before any worker starts and survives restarts);
rank 0 of the worker group logs per-epoch metrics into it through `RunLogger`, and the driver
logs the final evaluation. Everything goes through `MlflowClient` with an explicit run id, so
no process depends on mlflow's global "active run". The few mlflow calls that only read the
global tracking URI (`log_model`, `load_model`, `search_runs`) run inside `_global_uri(uri)`.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit


class TrackingError(RuntimeError):
    """A run or artifact is not where it was expected; the message names it and the fix."""


SECRET_KEY = re.compile(r"(token|password|passwd|secret|api[_-]?key|credential)", re.I)


# MLflow 3 refuses plain file stores; SQLite is its local default
DEFAULT_URI = "sqlite:///mlflow.db"


def uri_origin(uri: str) -> str:
    """Where the run's tracking URI comes from, in MLflow's own order (for messages)."""
    if uri:
        return "tracking.uri"
    return "MLFLOW_TRACKING_URI" if os.environ.get("MLFLOW_TRACKING_URI") else "the default"


def resolve_uri(uri: str) -> str:
    """MLflow's order: an explicit `tracking.uri` wins, else $MLFLOW_TRACKING_URI, else local
    SQLite. Relative SQLite paths and bare folders become absolute SQLite URIs.

    Ray workers do not share the driver's working directory, so a relative path would split
    one run across two databases.
    """
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI", "") or DEFAULT_URI
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str(Path(uri[len("sqlite:///") :]).resolve())
    if "://" not in uri and not uri.startswith("databricks"):  # a bare path: use SQLite
        return "sqlite:///" + str((Path(uri) / "mlflow.db").resolve())
    return uri


def experiment_name(cfg) -> str:
    """The run's MLflow experiment, in MLflow's order: `tracking.experiment`, else
    $MLFLOW_EXPERIMENT_NAME, else one experiment per dataset, `distcl-<dataset>`."""
    return (
        cfg.tracking.experiment
        or os.environ.get("MLFLOW_EXPERIMENT_NAME", "")
        or f"distcl-{cfg.data.dataset}"
    )


def is_local_uri(uri: str) -> bool:
    """True for stores that live in one machine's filesystem (SQLite, file:, bare paths)."""
    return uri.startswith(("sqlite:", "file:")) or ("://" not in uri and "databricks" not in uri)


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

    from distcl.tracking.review import mark_training, training_tags

    client, exp = MlflowClient(tracking_uri=uri), find_experiment(uri, name)
    if exp:
        mark_training(client, exp)  # experiments made before distcl set the tag, or by others
        return exp.experiment_id
    db = Path(uri[len("sqlite:///") :]).parent if uri.startswith("sqlite:///") else None
    where = str((db / "mlartifacts").resolve()) if db else None
    return client.create_experiment(name, where, tags=training_tags())


def find_experiment(uri: str, name: str = "", exp_id: str = "") -> Any:
    """The experiment named `name` (or with id `exp_id`), or None; never creates one."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    try:
        return client.get_experiment(exp_id) if exp_id else client.get_experiment_by_name(name)
    except MlflowException:
        return None


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

    from distcl.tracking.review import context_tags

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


def find_runs(uri: str, experiment: str, filter_string: str = "") -> list[Any]:
    """Runs of `experiment` matching an MLflow filter, newest first."""
    from mlflow.tracking import MlflowClient

    exp = find_experiment(uri, experiment)
    if exp is None:
        return []
    return MlflowClient(tracking_uri=uri).search_runs(
        [exp.experiment_id], filter_string=filter_string, order_by=["attributes.start_time DESC"]
    )


def get_run(uri: str, run_id: str) -> Any:
    """The run (info, params, tags, latest metrics), or RuntimeError naming the id and store."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        return MlflowClient(tracking_uri=uri).get_run(run_id)
    except MlflowException:
        raise TrackingError(
            f"MLflow run {run_id} not found in {mask_secrets(uri)}; check --run, or pass "
            "--tracking-uri of the store the run was logged to"
        ) from None


def read_artifact_text(uri: str, run_id: str, path: str) -> str | None:
    """The text of one artifact of a run, or None when it does not exist."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            return Path(client.download_artifacts(run_id, path, tmp)).read_text()
        except Exception:  # missing artifacts raise different types per store
            return None


@contextlib.contextmanager
def _global_uri(uri: str, **env: str | None):
    """Point mlflow's fluent API at `uri` (and set `env`; None unsets) for the block, then
    restore both (`mlflow.set_tracking_uri` also exports MLFLOW_TRACKING_URI: restored)."""
    import mlflow
    from mlflow.tracking._tracking_service import utils as service  # holds the global URI

    previous = getattr(service, "_tracking_uri", None)
    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", *env)}
    mlflow.set_tracking_uri(uri)
    os.environ.update({k: v for k, v in env.items() if v is not None})
    for k in [k for k, v in env.items() if v is None]:
        os.environ.pop(k, None)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def search_runs(uri: str, experiment_ids: list[str] | None = None, filter_string: str = "") -> Any:
    """`mlflow.search_runs` as a pandas DataFrame (newest first); all experiments when None."""
    import mlflow

    with _global_uri(uri):
        return mlflow.search_runs(
            experiment_ids=experiment_ids,
            filter_string=filter_string,
            search_all_experiments=experiment_ids is None,
            order_by=["attributes.start_time DESC"],
        )


def log_encoder(
    logger: RunLogger, encoder: Any, input_example: Any, registered_name: str = ""
) -> str:
    """Log `encoder` with `mlflow.pytorch.log_model` as `encoder` (registered under
    `registered_name` if given); returns its `models:/` URI, also set as tag encoder_model_uri.

    MLflow 3 defaults to `torch.export` (pt2): that loads back as a fixed graph refusing
    `.train()` (no fine-tuning) and took 44 s to export a small CNN here. The pickled module
    loads back as the same `nn.Module` class (distcl must be importable there).

    The requirements are given rather than inferred. MLflow's inference loads the model again
    in a new Python process to see what it imports, and that took 4.6 s per run here, against
    0.07 s with the requirements given.
    """
    import mlflow.pytorch

    from distcl import __version__

    requirements = [*mlflow.pytorch.get_default_pip_requirements(), f"distcl=={__version__}"]
    # the logged model belongs to the run's experiment (without an active run, mlflow would
    # put it in the global experiment, Default): the run page's Logged models, the Models tab
    exp = {"MLFLOW_EXPERIMENT_ID": logger.experiment_id, "MLFLOW_EXPERIMENT_NAME": None}
    with _global_uri(logger.uri, **exp):
        info = mlflow.pytorch.log_model(
            encoder,
            name="encoder",
            input_example=input_example,
            serialization_format="pickle",
            pip_requirements=requirements,
            run_id=logger.run_id,
            registered_model_name=registered_name or None,
        )
    logger.set_tags({"encoder_model_uri": info.model_uri})
    return info.model_uri


def load_encoder(uri: str, model_uri: str) -> Any:
    """Load an encoder logged by `log_encoder` as its `nn.Module` class, on CPU.

    It was pickled, and unpickling runs code: load only encoders from stores you trust. This
    allows it for this call only (MLFLOW_ALLOW_PICKLE_DESERIALIZATION).
    """
    import mlflow.pytorch

    with _global_uri(uri, MLFLOW_ALLOW_PICKLE_DESERIALIZATION="true"):
        return mlflow.pytorch.load_model(model_uri, map_location="cpu")


def log_figure(logger: RunLogger, fig: Any, artifact_file: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(artifact_file).name
        fig.savefig(path, dpi=110, bbox_inches="tight")
        logger.log_artifact(path, str(Path(artifact_file).parent) if "/" in artifact_file else None)
