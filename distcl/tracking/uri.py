"""Which MLflow store a run talks to, and what of its address may be shown.

`resolve_uri` follows MLflow's own order (`tracking.uri`, else $MLFLOW_TRACKING_URI, else local
SQLite) and makes local paths absolute; `mask_secrets` and `safe_params` keep passwords and
tokens out of params, logs and messages; `global_uri` points mlflow's fluent API at one store
for the few calls that read only the global tracking URI.
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

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
    """`flat` with secret-looking keys blanked and passwords in URIs masked (for log_params)."""
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


@contextlib.contextmanager
def global_uri(uri: str, **env: str | None):
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
