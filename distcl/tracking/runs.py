"""Finding what is already in an MLflow store: experiments, runs, and their artifacts.

Read-only: nothing here creates an experiment or a run (core.py writes). `search_runs` returns
the pandas DataFrame `distcl compare` builds its table from; the others return MLflow entities.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from distcl.tracking.uri import global_uri, mask_secrets


class TrackingError(RuntimeError):
    """A run or artifact is not where it was expected; the message names it and the fix."""


def find_experiment(uri: str, name: str = "", exp_id: str = "") -> Any:
    """The experiment named `name` (or with id `exp_id`), or None; never creates one."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    try:
        return client.get_experiment(exp_id) if exp_id else client.get_experiment_by_name(name)
    except MlflowException:
        return None


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
    """The run (info, params, tags, latest metrics), or TrackingError naming the id and store."""
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


def search_runs(uri: str, experiment_ids: list[str] | None = None, filter_string: str = "") -> Any:
    """`mlflow.search_runs` as a pandas DataFrame (newest first); all experiments when None."""
    import mlflow

    with global_uri(uri):
        return mlflow.search_runs(
            experiment_ids=experiment_ids,
            filter_string=filter_string,
            search_all_experiments=experiment_ids is None,
            order_by=["attributes.start_time DESC"],
        )
