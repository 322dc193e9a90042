"""`distcl launch`: submit `distcl train` to a running Ray cluster through the Ray Jobs API.

    distcl launch --address http://HEAD:8265 [--config PRESET_OR_YAML] [key.sub=value ...]
    distcl launch --address http://HEAD:8265 --status ID | --stop ID | --follow ID

The job's entrypoint is `distcl train --config ... key.sub=value ...` run on the head node; its
logs stream here and the job's end state becomes this process's exit code. Clusters and their
set-up live in cluster/ (README there). Ray's token auth is honoured: the token is read from
RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token and sent as a header, never printed
and never put in the job's runtime_env (which the dashboard shows to anyone).

Exit codes: 0 SUCCEEDED; the driver's exit code (else 1) when FAILED; 143 STOPPED;
130 detached with Ctrl-C (the job keeps running); 2 nothing was submitted (usage, address,
auth or Jobs API error; the message says what to check).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shlex
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from distcl.launch.jobs_api import LaunchError, auth_headers, call_api, connect, resolve_address

PASSTHROUGH_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "RAY_AUTH_MODE")
DEFAULT_EXCLUDES = [".git", ".venv", "**/__pycache__", "*.beton", "mlruns", "mlflow.db"]
EXIT_OK, EXIT_FAILED, EXIT_LAUNCH_ERROR, EXIT_DETACHED, EXIT_STOPPED = 0, 1, 2, 130, 143
_SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|CREDENTIAL|PRIVATE_KEY|ACCESS_KEY", re.I)
_OVERRIDE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*=")


def build_parser() -> argparse.ArgumentParser:
    """The `distcl launch` argument parser (overrides may come before or after options)."""
    p = argparse.ArgumentParser(prog="distcl launch", description=__doc__.split("\n")[0])
    add = p.add_argument
    add("--address", help="head's Jobs API, http://HEAD:8265 (or RAY_API_SERVER_ADDRESS)")
    add("--config", help="preset name or YAML path for `distcl train`")
    add("overrides", nargs="*", metavar="key.sub=value", help="overrides for `distcl train`")
    add("--resume", action="store_true", help="pass --resume to `distcl train`")
    add("--summary-json", metavar="PATH", help="pass --summary-json PATH (a path on the head)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--no-wait", action="store_true", help="print the submission id and exit")
    mode.add_argument("--status", metavar="ID", help="print a job's status and exit")
    mode.add_argument("--stop", metavar="ID", help="ask Ray to stop a job and exit")
    mode.add_argument("--follow", metavar="ID", help="stream a job's logs until it ends")
    mode.add_argument("--dry-run", action="store_true", help="print what would be submitted")
    add("--runtime-env", metavar="YAML", help="runtime_env file, e.g. cluster/runtime_env.yaml")
    add("--working-dir", help="ship this directory with the job (shadows the installed distcl)")
    add("--env", action="append", default=[], metavar="NAME[=VALUE]", help="env var for the job")
    add("--submission-id", help="id for the job (Ray refuses a reused id)")
    add("--distcl-bin", default="distcl", help="command that runs distcl on the cluster")
    add("--connect-timeout", type=float, default=5.0, metavar="S", help="seconds (default 5)")
    return p


def build_entrypoint(args: argparse.Namespace) -> str:
    """The shell command the job runs: `distcl train [--config C] [k=v ...]`, quoted."""
    bad = [o for o in args.overrides if not _OVERRIDE.match(o)]
    if bad:
        raise LaunchError(f"override {bad[0]!r} is not key.sub=value (e.g. train.epochs=10)")
    cmd = shlex.split(args.distcl_bin) + ["train"]
    cmd += ["--config", args.config] if args.config else []
    cmd += ["--summary-json", args.summary_json] if args.summary_json else []
    cmd += ["--resume"] if args.resume else []
    return shlex.join(cmd + list(args.overrides))


def build_runtime_env(args: argparse.Namespace) -> dict[str, Any]:
    """runtime_env: --runtime-env file, then --working-dir, then env vars (never secrets)."""
    env: dict[str, Any] = {}
    if args.runtime_env:
        try:
            env = yaml.safe_load(Path(args.runtime_env).read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise LaunchError(f"--runtime-env {args.runtime_env}: not readable YAML: {e}") from e
        if not isinstance(env, dict):
            raise LaunchError(f"--runtime-env {args.runtime_env}: need a mapping, got {env!r}")
    if args.working_dir:
        env["working_dir"] = args.working_dir
    if "working_dir" in env:
        env.setdefault("excludes", list(DEFAULT_EXCLUDES))
    env_vars = {k: os.environ[k] for k in PASSTHROUGH_ENV if os.environ.get(k)}
    env_vars.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")  # else each worker line shows twice
    env_vars.update({str(k): str(v) for k, v in (env.get("env_vars") or {}).items()})
    for item in args.env:
        name, sep, value = item.partition("=")
        if not sep and name not in os.environ:
            raise LaunchError(f"--env {name}: not set here; use --env {name}=VALUE")
        env_vars[name] = value if sep else os.environ[name]
    secret = sorted(k for k in env_vars if _SECRET_NAME.search(k))
    if secret:
        raise LaunchError(
            f"refusing to put {secret[0]} in the runtime_env, which the dashboard "
            "shows: give nodes secrets directly (instance role, k8s Secret)"
        )
    if env_vars:
        env["env_vars"] = env_vars
    return env


def job_tracking_uri(args: argparse.Namespace, runtime_env: dict[str, Any]) -> str:
    """The MLflow URI the job will use, in `distcl train`'s order ("" = tracking is off):
    a `tracking.uri=` override, the --config file's tracking.uri, the job's
    MLFLOW_TRACKING_URI, else the local SQLite default."""
    from distcl.config.schema import ConfigError, load_yaml
    from distcl.tracking.core import DEFAULT_URI

    values: dict[str, Any] = {}
    if args.config:
        try:
            values = load_yaml(args.config)
        except ConfigError:  # a path that exists only on the head: the job checks it there
            values = {}
    values.update(o.split("=", 1) for o in args.overrides)
    if str(values.get("tracking.enabled", True)).lower() in ("false", "0", "no", "off"):
        return ""
    env_uri = (runtime_env.get("env_vars") or {}).get("MLFLOW_TRACKING_URI", "")
    return str(values.get("tracking.uri") or "") or env_uri or DEFAULT_URI


def _alive_nodes(address: str) -> int | None:
    """Alive nodes of the cluster, from the dashboard's state API (None if it did not answer)."""
    import urllib.request

    req = urllib.request.Request(f"{address}/api/v0/nodes?limit=10000", headers=auth_headers())
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            rows = json.loads(r.read())["data"]["result"]["result"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return sum(1 for n in rows if n.get("state") == "ALIVE")


def check_job_tracking(address: str, uri: str) -> None:
    """Refuse a SQLite or file MLflow store when the job's workers can run on other nodes:
    each node would write its own file. Loopback single-node clusters may keep one."""
    from distcl.tracking.core import is_local_uri

    if not uri or not is_local_uri(uri):
        return
    remote = (urlsplit(address).hostname or "") not in ("127.0.0.1", "localhost", "::1")
    nodes = None if remote else _alive_nodes(address)
    if remote or (nodes or 1) > 1:
        where = "a remote cluster" if remote else f"a cluster of {nodes} nodes"
        raise LaunchError(
            f"the job would track to {uri}, a file on the head, but {address} is {where}: rank 0 "
            "on another node would write a different file. Run one MLflow server every node "
            "reaches and pass it: MLFLOW_TRACKING_URI=http://MLFLOW_HOST:5000 distcl launch ... "
            "(or tracking.uri=http://MLFLOW_HOST:5000, or tracking.enabled=false)"
        )


def job_exit_code(status: str, driver_exit_code: int | None) -> int:
    """0 for SUCCEEDED, 143 for STOPPED, else the driver's exit code or 1."""
    if status == "SUCCEEDED":
        return EXIT_OK
    if status == "STOPPED":
        return EXIT_STOPPED
    return driver_exit_code if driver_exit_code and 0 < driver_exit_code < 256 else EXIT_FAILED


async def _follow(client: Any, submission_id: str, poll_s: float) -> Any:
    address = client.get_address()

    async def tail() -> None:
        try:
            async for chunk in client.tail_job_logs(submission_id):
                sys.stdout.write(chunk)
                sys.stdout.flush()
        except Exception as e:  # the stream can drop; the status poll below still ends the wait
            _say(f"log stream lost ({e}); still waiting for the job to end")

    logs = asyncio.create_task(tail())
    start, last = time.monotonic(), None
    while True:
        info = await asyncio.to_thread(call_api, address, client.get_job_info, submission_id)
        if info.status != last and not info.status.is_terminal():
            _say(f"{submission_id} {info.status} ({time.monotonic() - start:.0f} s)")
        last = info.status
        if info.status.is_terminal():
            break
        await asyncio.sleep(poll_s)
    try:  # the stream closes when the job ends; let it deliver the last lines
        await asyncio.wait_for(logs, timeout=15)
    except asyncio.TimeoutError:
        pass
    return info


def follow(client: Any, submission_id: str, poll_s: float = 2.0) -> int:
    """Stream a job's logs to stdout until it ends; return its exit code (see job_exit_code)."""
    start = time.monotonic()
    try:
        info = asyncio.run(_follow(client, submission_id, poll_s))
    except KeyboardInterrupt:
        _say(f"detached; {submission_id} keeps running (stop it: --stop {submission_id})")
        return EXIT_DETACHED
    code = job_exit_code(str(info.status), info.driver_exit_code)
    why = f": {info.message}" if info.message and code else ""
    _say(f"{submission_id} {info.status} after {time.monotonic() - start:.0f} s{why} (exit {code})")
    return code


def _say(message: str) -> None:
    print(f"distcl launch: {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    """Entry point of `distcl launch` and `python -m distcl.launch.submit`; returns the exit code."""
    try:
        args = build_parser().parse_intermixed_args(argv)
    except SystemExit as e:  # --help or a usage error; argparse already printed why
        return int(e.code or 0)
    try:
        if not (args.status or args.stop or args.follow):  # check arguments before connecting
            entrypoint, runtime_env = build_entrypoint(args), build_runtime_env(args)
        if args.dry_run:
            print(json.dumps({"entrypoint": entrypoint, "runtime_env": runtime_env}, indent=2))
            return EXIT_OK
        address = resolve_address(args.address)
        client = connect(address, args.connect_timeout)
        if args.status:
            info = call_api(address, client.get_job_info, args.status)
            print(f"{args.status}\t{info.status}\t{info.message or ''}")
            return EXIT_OK
        if args.stop:
            stopped = call_api(address, client.stop_job, args.stop)
            print(f"{args.stop}\t{'stop requested' if stopped else 'not running'}")
            return EXIT_OK
        if args.follow:
            return follow(client, args.follow)
        check_job_tracking(address, job_tracking_uri(args, runtime_env))
        submission_id = call_api(
            address,
            lambda: client.submit_job(
                entrypoint=entrypoint,
                runtime_env=runtime_env,
                submission_id=args.submission_id,
                metadata={"launcher": "distcl launch", "config": args.config or ""},
            ),
        )
        print(submission_id, flush=True)
        _say(f"submitted `{entrypoint}` to {address}")
        return EXIT_OK if args.no_wait else follow(client, submission_id)
    except LaunchError as e:
        _say(f"error: {e}")
        return EXIT_LAUNCH_ERROR


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
