"""`distcl launch` and the SLURM script against real Ray nodes on this machine (all slow).

The module fixture starts a Ray head and a second Ray node as two `ray start --block` processes
on 127.0.0.1 (1 CPU each, token auth, own temp dir and ports) and always stops them by process
tree, never with `ray stop`, which would also stop other Ray instances of the test session.
Jobs run a stand-in `distcl` (prints its argv, exits as asked) to test the launch mechanics,
and the real `distcl train` once distcl.train exists.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from importlib.util import find_spec
from pathlib import Path

import pytest

from distcl import launch

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
FAKE_DISTCL = """import json, os, sys, time
opts = dict(a.split("=", 1) for a in sys.argv[1:] if "=" in a and not a.startswith("-"))
print("fake-distcl argv=" + json.dumps(sys.argv[1:]), flush=True)
print("fake-distcl MLFLOW_TRACKING_URI=" + os.environ.get("MLFLOW_TRACKING_URI", ""), flush=True)
time.sleep(float(opts.get("test.sleep_s", 0)))
sys.exit(int(opts.get("test.exit_code", 0)))
"""


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
    """A Ray head plus `num_nodes - 1` worker nodes, each its own `ray start --block` process."""

    def __init__(self, num_nodes: int = 2, timeout_s: float = 120) -> None:
        self.temp_dir = Path(tempfile.mkdtemp(prefix="distcl-ray-", dir="/tmp"))  # short: sockets
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
                f"--head --port={self.gcs_port} --disable-usage-stats "
                f"--dashboard-host=127.0.0.1 --dashboard-port={self.dashboard_port} "
                f"--ray-client-server-port={client_port}",
            )
            self._wait(lambda: self._get("/api/version") is not None, timeout_s, "head dashboard")
            for i in range(1, num_nodes):
                self._start(f"node{i}", f"--address=127.0.0.1:{self.gcs_port}")
            self._wait(lambda: len(self.alive_nodes()) == num_nodes, timeout_s, "all nodes")
        except BaseException:
            self.stop()
            raise

    def _start(self, name: str, args: str) -> None:
        ports = dict(zip(NODE_PORTS, free_ports(len(NODE_PORTS)), strict=True))
        cmd = f"{VENV_BIN / 'ray'} start --block --num-cpus=1 --node-ip-address=127.0.0.1 "
        cmd += f"--temp-dir={self.temp_dir} --object-store-memory=100000000 {args} "
        cmd += " ".join(f"--{flag}={port}" for flag, port in ports.items())
        log = open(self.temp_dir / f"{name}.log", "w")  # noqa: SIM115 (lives as long as Ray)
        popen = subprocess.Popen(
            cmd.split(), env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )  # own process group, stopped by tree
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

    def alive_nodes(self) -> list[str]:
        """Node ids of the ALIVE nodes, from Ray's state API on the dashboard."""
        data = self._get("/api/v0/nodes") or {}
        rows = data.get("data", {}).get("result", {}).get("result", [])
        return [n["node_id"] for n in rows if n.get("state") == "ALIVE"]

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


@pytest.fixture(scope="module")
def cluster():
    try:
        c = LocalRayCluster(num_nodes=2)
    except RuntimeError as first:  # a node can lose a port race on a busy machine: once more
        print(f"retrying the Ray cluster start after: {first}", file=sys.stderr)
        c = LocalRayCluster(num_nodes=2)
    yield c
    left = c.stop()
    assert not left, f"Ray processes left after teardown: {left}"


@pytest.fixture
def env(cluster, monkeypatch, tmp_path):
    """This process talks to the cluster with its token; MLflow points at a sqlite file."""
    for name in ("RAY_AUTH_TOKEN", "RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(cluster.token_file))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    fake = tmp_path / "fake_distcl.py"
    fake.write_text(FAKE_DISTCL)
    return ["--address", cluster.address, "--distcl-bin", f"{sys.executable} {fake}"]


def _fake_argv(out: str) -> list[str]:
    return json.loads(re.search(r"fake-distcl argv=(.*)", out).group(1))


def test_fixture_has_two_alive_nodes(cluster):
    nodes = cluster.alive_nodes()
    assert len(nodes) == 2 and len(set(nodes)) == 2


def test_launch_streams_logs_and_returns_the_jobs_exit_status(env, capsys):
    assert launch.main([*env, "--config", "tiny", "test.exit_code=0", "note.text=two words"]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines()[0].startswith("raysubmit_")
    assert _fake_argv(out) == [
        "train",
        "--config",
        "tiny",
        "test.exit_code=0",
        "note.text=two words",
    ]
    assert f"MLFLOW_TRACKING_URI={os.environ['MLFLOW_TRACKING_URI']}" in out  # passed through
    assert "SUCCEEDED" in err

    assert launch.main([*env, "test.exit_code=3"]) == 3  # the driver's exit code comes back
    out, err = capsys.readouterr()
    assert "FAILED" in err and _fake_argv(out) == ["train", "test.exit_code=3"]


def test_no_wait_status_stop_and_follow(env, capsys):
    assert launch.main([*env, "--no-wait", "test.sleep_s=120"]) == 0
    sid = capsys.readouterr().out.strip()
    assert sid.startswith("raysubmit_")
    assert launch.main([*env, "--status", sid]) == 0
    assert capsys.readouterr().out.split("\t")[1] in ("PENDING", "RUNNING")
    assert launch.main([*env, "--stop", sid]) == 0
    assert "stop requested" in capsys.readouterr().out
    t0 = time.monotonic()
    assert launch.main([*env, "--follow", sid]) == launch.EXIT_STOPPED
    assert time.monotonic() - t0 < 60  # the stop took, no waiting out the 120 s sleep
    assert launch.main([*env, "--status", sid]) == 0
    assert "\tSTOPPED\t" in capsys.readouterr().out


def test_wrong_or_missing_token_is_refused_with_what_to_check(
    env, cluster, capsys, monkeypatch, tmp_path
):
    wrong = "f" * 64
    monkeypatch.setenv("RAY_AUTH_TOKEN", wrong)  # takes precedence over the token file
    assert launch.main([*env, "--status", "raysubmit_none"]) == launch.EXIT_LAUNCH_ERROR
    out, err = capsys.readouterr()
    assert "403" in err and "RAY_AUTH_TOKEN" in err and "ray get-auth-token" in err
    real = cluster.token_file.read_text()
    assert wrong not in out + err and real not in out + err  # tokens are never printed

    # No token at all, in a fresh process: Ray's client caches the auth mode per process.
    bare = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    cmd = [sys.executable, "-m", "distcl.launch", "--address", cluster.address, "--status", "x"]
    res = subprocess.run(
        cmd,
        env={**bare, "HOME": str(tmp_path)},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == launch.EXIT_LAUNCH_ERROR
    assert "401" in res.stderr and "RAY_AUTH_MODE=token" in res.stderr
    assert real not in res.stdout + res.stderr


@pytest.mark.skipif(
    find_spec("distcl.train") is None or find_spec("distcl.cli") is None,
    reason="distcl.train / distcl.cli not written yet",
)
def test_two_worker_training_job_runs_on_two_nodes(env, cluster, tmp_path, capsys):
    db = tmp_path / "mlflow.db"
    overrides = [
        "data.dataset=synthetic",
        f"data.beton_dir={tmp_path / 'betons'}",
        "data.loader_workers=1",
        "model.width=8",
        "model.feat_dim=0",  # 8 x width: the tiny net
        "train.epochs=1",
        "train.global_batch=64",
        "train.num_workers=2",
        "train.cpus_per_worker=1",
        "train.placement_strategy=STRICT_SPREAD",
        f"train.storage_path={tmp_path / 'runs'}",
        "eval.knn_every=0",
        "eval.baselines=false",
        f"tracking.uri=sqlite:///{db}",
    ]
    rc = launch.main(["--address", cluster.address, "--config", "fashion_mnist_simclr", *overrides])
    out, err = capsys.readouterr()
    assert rc == 0, f"job did not succeed:\n{out[-4000:]}\n{err[-2000:]}"
    assert "SUCCEEDED" in err
    line = re.search(r"distcl: worker nodes: (.+)", out)
    assert line, f"no 'distcl: worker nodes:' line in the job's log:\n{out[-3000:]}"
    ids = [i for i in re.split(r"[,\s]+", line.group(1).strip()) if i]
    assert len(ids) == 2 and len(set(ids)) == 2  # STRICT_SPREAD: one worker per node
    assert set(ids) <= set(cluster.alive_nodes())
    with sqlite3.connect(db) as con:
        runs = con.execute("SELECT run_uuid FROM runs WHERE status = 'FINISHED'").fetchall()
        assert runs, "no finished MLflow run in the sqlite store"
        run = runs[-1][0]
        assert con.execute("SELECT COUNT(*) FROM metrics WHERE run_uuid = ?", (run,)).fetchone()[0]
        recorded = con.execute(
            "SELECT value FROM tags WHERE run_uuid = ? AND key = 'worker_node_ids' UNION ALL "
            "SELECT value FROM params WHERE run_uuid = ? AND key = 'worker_node_ids'",
            (run, run),
        ).fetchone()
    assert recorded, "rank 0 recorded no worker_node_ids tag or param in MLflow"
    assert sorted(recorded[0].split(",")) == sorted(ids)
