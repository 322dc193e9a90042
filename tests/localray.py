"""A Ray cluster of `ray start --block` processes on 127.0.0.1 for the tests (head + worker
nodes, token auth, own temp dir and ports), always stopped by process tree, never with
`ray stop`, which would also stop other Ray instances of the test session."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent

NODE_PORTS = (
    "dashboard-agent-listen-port",
    "dashboard-agent-grpc-port",
    "runtime-env-agent-port",
    "metrics-export-port",
    "node-manager-port",
    "object-manager-port",
)  # per node


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _procs() -> dict[int, tuple[int, int, str, str]]:
    """pid -> (ppid, pgid, state, start time) for every live process, from /proc."""
    out = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except (OSError, ValueError):
            continue
        f = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
        out[int(d.name)] = (int(f[1]), int(f[2]), f[0], f[19])
    return out


def _tree(roots: list[int], marker: str) -> dict[int, str]:
    """{pid: start time} of the roots, their descendants and process groups, and any process
    whose command line names `marker` (the temp dir) — Ray workers start new sessions."""
    procs, found = _procs(), set(roots)
    for pid in procs:
        try:
            if marker in (Path("/proc") / str(pid) / "cmdline").read_text(errors="replace"):
                found.add(pid)
        except OSError:
            pass
    found |= {p for p, (_, pgid, _, _) in procs.items() if pgid in roots}
    grew = True
    while grew:
        kids = {p for p, (ppid, _, _, _) in procs.items() if ppid in found} - found
        found |= kids
        grew = bool(kids)
    return {p: procs[p][3] for p in found if p in procs and procs[p][2] != "Z"}


def _alive(tracked: dict[int, str]) -> list[int]:
    now = _procs()
    return sorted(p for p, t in tracked.items() if p in now and now[p][3] == t and now[p][2] != "Z")


def stop_process_tree(popens: list[subprocess.Popen], marker: str, grace_s: float = 20) -> list:
    """SIGTERM the `ray start` processes, wait, SIGKILL what is left; return pids that survived."""
    roots = [p.pid for p in popens]
    tracked = _tree(roots, marker)
    for p in reversed(popens):  # workers first, head last
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while True:
        tracked.update(_tree(roots, marker))  # children started while stopping
        live = _alive(tracked)
        if not live or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    for pid in live:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for p in popens:
        p.wait(timeout=10)
    time.sleep(0.5)
    return _alive({**tracked, **_tree([], marker)})


class LocalRayCluster:
    """A Ray head with `head_cpus` CPUs plus `num_nodes - 1` worker nodes of 1 CPU, each its own
    `ray start --block` process."""

    def __init__(self, num_nodes: int = 2, timeout_s: float = 120, head_cpus: int = 1) -> None:
        self.temp_dir = Path(tempfile.mkdtemp(prefix="distcl-ray-", dir="/tmp"))  # short: sockets
        # Every Ray process starts here; a job without a runtime_env working_dir runs here.
        self.cwd = self.temp_dir / "cwd"
        self.cwd.mkdir()
        self.token_file = self.temp_dir / "auth_token"
        self.token_file.write_text(secrets.token_hex(32))
        self.token_file.chmod(0o600)
        shim_dir = self.temp_dir / "bin"
        shim_dir.mkdir()
        if not (VENV_BIN / "distcl").exists():  # before `pip install -e .`: the console script
            (shim_dir / "distcl").write_text(
                f"#!{sys.executable}\nimport sys\nfrom distcl.cli import main\nsys.exit(main())\n"
            )
            (shim_dir / "distcl").chmod(0o755)
        drop = ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_TOKEN")
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
        self.env.update(
            RAY_AUTH_MODE="token",
            RAY_AUTH_TOKEN_PATH=str(self.token_file),
            OMP_NUM_THREADS="1",
            RAY_USAGE_STATS_ENABLED="0",
            RAY_TRAIN_HEALTH_CHECK_INTERVAL_S="0.2",
            PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
            PATH=os.pathsep.join([str(shim_dir), str(VENV_BIN), os.environ.get("PATH", "")]),
        )
        self.gcs_port, self.dashboard_port, client_port = free_ports(3)
        self.address = f"http://127.0.0.1:{self.dashboard_port}"
        self.popens: list[subprocess.Popen] = []
        try:
            self._start(
                "head",
                f"--num-cpus={head_cpus} --head --port={self.gcs_port} --disable-usage-stats "
                f"--dashboard-host=127.0.0.1 --dashboard-port={self.dashboard_port} "
                f"--ray-client-server-port={client_port}",
            )
            self._wait(lambda: self._get("/api/version") is not None, timeout_s, "head dashboard")
            for i in range(1, num_nodes):  # one at a time, each started again once if it fails
                self._start_node(i, timeout_s)
        except BaseException:
            self.stop()
            raise

    def _start_node(self, i: int, timeout_s: float) -> None:
        """Worker node i, up and registered. On a loaded 2-core machine a node's `ray start`
        has died with "Failed to get node info: Deadline Exceeded"; a second start succeeds."""
        for attempt in (1, 2):
            self._start(f"node{i}", f"--num-cpus=1 --address=127.0.0.1:{self.gcs_port}")
            try:
                self._wait(lambda: len(self.alive_nodes()) == i + 1, timeout_s, f"node{i}")
                return
            except RuntimeError:
                if attempt == 2:
                    raise
                failed = self.popens.pop()
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(failed.pid, signal.SIGKILL)  # its own group (start_new_session)
                failed.wait()

    def _start(self, name: str, args: str) -> None:
        ports = dict(zip(NODE_PORTS, free_ports(len(NODE_PORTS)), strict=True))
        cmd = f"{VENV_BIN / 'ray'} start --block --node-ip-address=127.0.0.1 "
        cmd += f"--temp-dir={self.temp_dir} --object-store-memory=100000000 {args} "
        cmd += " ".join(f"--{flag}={port}" for flag, port in ports.items())
        log = open(self.temp_dir / f"{name}.log", "w")  # noqa: SIM115 (lives as long as Ray)
        popen = subprocess.Popen(
            cmd.split(),
            env=self.env,
            cwd=self.cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group, stopped by tree
        )
        self.popens.append(popen)

    def _wait(self, ready, timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not ready():
            if time.monotonic() > deadline or any(p.poll() is not None for p in self.popens):
                logs = "".join(
                    f"\n--- {p.name}\n{p.read_text()[-2000:]}" for p in self.temp_dir.glob("*.log")
                )
                raise RuntimeError(f"Ray {what} not up within {timeout_s:.0f} s{logs}")
            time.sleep(0.5)

    def _get(self, path: str) -> dict | None:
        req = urllib.request.Request(
            self.address + path, headers={"Authorization": f"Bearer {self.token_file.read_text()}"}
        )
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                return json.loads(r.read())
        except (OSError, ValueError):
            return None

    def _nodes(self) -> list[dict]:
        """The ALIVE nodes, from Ray's state API on the dashboard."""
        data = self._get("/api/v0/nodes") or {}
        rows = data.get("data", {}).get("result", {}).get("result", [])
        return [n for n in rows if n.get("state") == "ALIVE"]

    def alive_nodes(self) -> list[str]:
        return [n["node_id"] for n in self._nodes()]

    def head_node_id(self) -> str:
        return next(n["node_id"] for n in self._nodes() if n.get("is_head_node"))

    def cpus(self) -> dict[str, float]:
        """node id -> CPUs it offers."""
        return {n["node_id"]: n.get("resources_total", {}).get("CPU", 0) for n in self._nodes()}

    def stop(self) -> list[int]:
        try:
            return stop_process_tree(self.popens, str(self.temp_dir))
        finally:  # whatever happened above, no process group of ours outlives the test
            for p in self.popens:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            shutil.rmtree(self.temp_dir, ignore_errors=True)
