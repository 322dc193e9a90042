"""The Ray Jobs API connection of `distcl launch`: the address, Ray's token auth, the client.

`resolve_address` finds the Jobs API (`--address`, RAY_API_SERVER_ADDRESS or RAY_ADDRESS) and
refuses the GCS port; `connect` checks the port answers before building Ray's
`JobSubmissionClient` with the token header (`auth_headers`); `call_api` turns the client's errors
into a LaunchError that says what to check.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

DEFAULT_DASHBOARD_PORT = 8265  # `ray start --head` serves the dashboard and Jobs API here
_TOKEN_HELP = (
    "Give this machine the cluster's token: RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or "
    "~/.ray/auth_token (`ray get-auth-token` on the head prints it; on KubeRay, the Secret)."
)
_CHECKS = (
    "Check: the address and port (the Jobs API is the head's dashboard port, 8265 unless "
    "`ray start --dashboard-port` says otherwise; not the GCS port 6379); that the head runs the "
    "dashboard (`ray start --head --dashboard-host=0.0.0.0`, with `ray[default]` installed on "
    "the head); and the tunnel if any (`ray dashboard cluster/aws.yaml`, "
    "`kubectl port-forward svc/distcl-head-svc 8265:8265`)."
)


class LaunchError(Exception):
    """Nothing was submitted or changed; the message says what to check."""


def resolve_address(address: str | None) -> str:
    """`http(s)://host:port` of the Jobs API, from --address or the environment."""
    env = os.environ.get("RAY_ADDRESS", "")
    address = address or os.environ.get("RAY_API_SERVER_ADDRESS") or env * ("://" in env)
    use = "use --address http://HEAD:8265 (the head's dashboard port)"
    if not address or address.startswith("ray://"):
        raise LaunchError(f"no Jobs API address ({address or 'none given'}): {use}")
    parts = urlsplit(address if "://" in address else "http://" + address)
    try:
        port = parts.port
    except ValueError:
        port = -1
    if parts.scheme not in ("http", "https") or not parts.hostname or port in (-1, 6379, 10001):
        raise LaunchError(f"--address {address} is not the Jobs API (6379 is the GCS): {use}")
    netloc = parts.netloc if port else f"{parts.netloc}:{DEFAULT_DASHBOARD_PORT}"
    return f"{parts.scheme}://{netloc}{parts.path.rstrip('/')}"


def _token_source() -> tuple[str | None, str | None]:
    """(token, where it came from), in Ray's own order of precedence."""
    if os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return os.environ["RAY_AUTH_TOKEN"].strip(), "RAY_AUTH_TOKEN"
    path_env = os.environ.get("RAY_AUTH_TOKEN_PATH")
    path = Path(path_env) if path_env else Path.home() / ".ray" / "auth_token"
    where = f"RAY_AUTH_TOKEN_PATH={path}" if path_env else str(path)
    try:
        token = path.read_text().strip()
    except OSError:
        token = ""
    if path_env and not token:
        raise LaunchError(f"RAY_AUTH_TOKEN_PATH={path} is unreadable or empty; fix or unset it")
    return (token, where) if token else (None, None)


def auth_headers() -> dict[str, str]:
    """The Authorization header for Ray token auth; {} when RAY_AUTH_MODE=disabled.

    Read here rather than left to Ray's client, which caches the auth mode per process.
    """
    mode = os.environ.get("RAY_AUTH_MODE", "").lower()
    if mode == "disabled":
        return {}
    token, _ = _token_source()
    if token is None and mode == "token":
        raise LaunchError(f"RAY_AUTH_MODE=token but no token here. {_TOKEN_HELP}")
    return {"Authorization": f"Bearer {token}"} if token else {}


def call_api(address: str, fn: Any, *args: Any, hint: str = "") -> Any:
    """Run one Jobs API call, turning its errors into a LaunchError that says what to check."""
    from ray.exceptions import AuthenticationError

    try:
        return fn(*args)
    except AuthenticationError as e:
        code = "401, no token sent" if "required" in e.message else "403, wrong token"
        mode, where = os.environ.get("RAY_AUTH_MODE", "unset"), _token_source()[1] or "none"
        raise LaunchError(
            f"the Ray cluster at {address} refused the request (HTTP {code}): it runs with "
            f"token auth; here RAY_AUTH_MODE is {mode} and the token file is {where}. "
            f"Check: export RAY_AUTH_MODE=token. {_TOKEN_HELP}"
        ) from None
    except (OSError, RuntimeError) as e:  # ConnectionError, requests' errors, HTTP errors
        raise LaunchError(f"the Ray Jobs API at {address} failed: {e}. {hint}") from None


def connect(address: str, timeout_s: float = 5.0) -> Any:
    """A JobSubmissionClient for `address`, or a LaunchError that says what to check."""
    try:
        from ray.job_submission import JobSubmissionClient
    except ImportError as e:
        raise LaunchError(f"no Ray Jobs client here ({e}): pip install 'ray[default]'") from e
    parts = urlsplit(address)
    try:
        socket.create_connection((parts.hostname, parts.port), timeout=timeout_s).close()
    except OSError as e:
        why = "timed out" if isinstance(e, TimeoutError) else (e.strerror or str(e))
        raise LaunchError(f"cannot reach the Ray Jobs API at {address} ({why}). {_CHECKS}") from e
    headers = auth_headers()
    return call_api(address, lambda: JobSubmissionClient(address, headers=headers), hint=_CHECKS)
