"""`distcl launch` against real Ray nodes on this machine (all slow).

The module fixture starts three `ray start --block` processes on 127.0.0.1, shaped like
cluster/kuberay/rayjob.yaml: a head with 0 CPUs (the manifests' `num-cpus: "0"`: it runs the
job's driver and no training worker) and two worker nodes with 1 CPU each (its two worker
replicas), with token auth, their own temp dir and ports. They are always stopped by process
tree, never with `ray stop`, which would also stop other Ray instances of the test session.
Most jobs run a stand-in `distcl` (prints its argv, exits as asked) to test the launch
mechanics; one runs the RayJob manifest's entrypoint with the real `distcl`, tracking to a real
MLflow server. The SLURM script's real run is in tests/test_cluster_configs.py.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from distcl import launch

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
FAKE_DISTCL = """import json, os, sys, time
opts = dict(a.split("=", 1) for a in sys.argv[1:] if "=" in a and not a.startswith("-"))
print("fake-distcl argv=" + json.dumps(sys.argv[1:]), flush=True)
print("fake-distcl MLFLOW_TRACKING_URI=" + os.environ.get("MLFLOW_TRACKING_URI", ""), flush=True)
print("fake-distcl cwd=" + os.getcwd(), flush=True)
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
            for i in range(1, num_nodes):
                self._start(f"node{i}", f"--num-cpus=1 --address=127.0.0.1:{self.gcs_port}")
            self._wait(lambda: len(self.alive_nodes()) == num_nodes, timeout_s, "all nodes")
        except BaseException:
            self.stop()
            raise

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


@pytest.fixture(scope="module")
def cluster():
    try:
        c = LocalRayCluster(num_nodes=3, head_cpus=0)
    except RuntimeError as first:  # a node can lose a port race on a busy machine: once more
        print(f"retrying the Ray cluster start after: {first}", file=sys.stderr)
        c = LocalRayCluster(num_nodes=3, head_cpus=0)
    yield c
    left = c.stop()
    assert not left, f"Ray processes left after teardown: {left}"


@pytest.fixture
def env(cluster, monkeypatch, tmp_path):
    """This process talks to the cluster with its token. The stand-in never connects to MLflow,
    so an http:// URI that resolves nowhere serves (`distcl launch` refuses a SQLite or file
    store on a cluster of more than one node)."""
    for name in ("RAY_AUTH_TOKEN", "RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(cluster.token_file))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.invalid:5000")
    fake = tmp_path / "fake_distcl.py"
    fake.write_text(FAKE_DISTCL)
    return ["--address", cluster.address, "--distcl-bin", f"{sys.executable} {fake}"]


def _fake_argv(out: str) -> list[str]:
    return json.loads(re.search(r"fake-distcl argv=(.*)", out).group(1))


def test_fixture_is_a_cpu_less_head_and_two_worker_nodes(cluster):
    cpus = cluster.cpus()
    assert len(cpus) == 3 and cpus.pop(cluster.head_node_id()) == 0
    assert sorted(cpus.values()) == [1, 1]


def test_launch_streams_logs_and_returns_the_jobs_exit_status(env, cluster, capsys):
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
    assert f"fake-distcl cwd={cluster.cwd}\n" in out  # the head's cwd: checked for strays below
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


def test_a_local_tracking_store_is_refused_before_anything_is_submitted(env, capsys, monkeypatch):
    assert launch.main([*env, "tracking.uri=sqlite:///mlflow.db"]) == launch.EXIT_LAUNCH_ERROR
    out, err = capsys.readouterr()
    assert "raysubmit_" not in out and "a cluster of 3 nodes" in err
    assert "MLFLOW_TRACKING_URI=http://MLFLOW_HOST:5000" in err  # the fix
    monkeypatch.delenv("MLFLOW_TRACKING_URI")  # MLflow's default is a local SQLite file too
    assert launch.main(env) == launch.EXIT_LAUNCH_ERROR
    assert "sqlite:///mlflow.db" in capsys.readouterr().err


# Later overrides win: these shrink a GPU preset's run to a tiny CNN on CPU that finishes in
# seconds. The cluster routes set the resources (train.num_workers, ...) themselves.
TINY_RUN = [
    "model.arch=small_cnn",
    "model.width=8",
    "model.feat_dim=0",  # 8 x width
    "model.proj_hidden=64",
    "model.proj_dim=32",
    "data.resolution=32",  # the tiny CIFAR-10 files' size
    "data.loader_workers=1",
    "train.epochs=2",
    "train.global_batch=64",
    "eval.knn_every=0",  # kNN at the last epoch only
    "eval.semi=false",
    "eval.tsne_points=0",
    "eval.baselines=false",
    "tracking.log_model=false",
    "tracking.system_metrics=false",
]


def write_tiny_cifar10(root: Path) -> Path:
    """`root/cifar-10-batches-py/`: 200 train and 40 test images of 32 x 32 in CIFAR's format."""
    from tests.data.native_fixtures import make_cifar10

    make_cifar10(root, per_batch=40, n_test=40)
    return root


def check_tracked_run(uri: str, storage: Path, epochs: int) -> Any:
    """The one run whose checkpoints are under `storage`, read back from the MLflow server:
    FINISHED, tracked through $MLFLOW_TRACKING_URI, each epoch's metrics logged exactly once."""
    from mlflow.tracking import MlflowClient

    from distcl.driver import RUN_FILE

    run_files = list(storage.glob(f"*/{RUN_FILE}"))
    assert len(run_files) == 1, f"want one run under {storage}, got {run_files}"
    checkpoints = [p for p in run_files[0].parent.glob("checkpoint_*") if p.is_dir()]
    assert checkpoints and all(any(c.iterdir()) for c in checkpoints), "no checkpoint written"
    run_id = json.loads(run_files[0].read_text())["mlflow_run_id"]
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["tracking.uri"] == ""  # the URI came through the environment only
    for key in ("loss", "images_per_s", "epoch_time_s"):
        steps = sorted(m.step for m in client.get_metric_history(run_id, key))
        assert steps == list(range(1, epochs + 1)), f"{key} logged at steps {steps}"
    return run


def assert_no_local_leftovers(cwd: Path) -> None:
    """Nothing of a run in the driver's working directory: storage and MLflow are elsewhere."""
    stray = [p.name for p in cwd.iterdir() if p.name in ("runs", "mlflow.db", "mlruns", "data")]
    assert not stray, f"the run wrote {stray} into the driver's working directory {cwd}"


def test_rayjob_entrypoint_trains_on_the_worker_nodes_and_tracks_to_the_mlflow_server(
    cluster, mlflow_server, tmp_path, capsys, monkeypatch
):
    """cluster/kuberay/rayjob.yaml's entrypoint and runtime env, submitted with `distcl launch`.

    Only the site's parts are replaced: /mnt/shared (the PVC) by a folder holding tiny CIFAR-10
    files, the S3 bucket by a local folder that is not the job's working directory, and the
    MLflow host by the test's server, given only as the runtime env's MLFLOW_TRACKING_URI as
    the manifest does. `TINY_RUN` and the CPU resources are appended as overrides.

    The RayCluster route (README: `distcl launch --config cifar10_simclr_resnet18 OVERRIDES`
    against a long-lived cluster) submits through the same `distcl launch` and runs the same
    `distcl train` with the same preset and overrides minus data.root; what differs is how
    launch builds the entrypoint from its arguments and passes the shell's MLFLOW_TRACKING_URI
    through, both asserted by the stand-in tests above. A second real run would add about a
    minute and no other code path.
    """
    spec = yaml.safe_load((REPO / "cluster" / "kuberay" / "rayjob.yaml").read_text())["spec"]
    shared, bucket = tmp_path / "shared", tmp_path / "bucket" / "checkpoints"
    write_tiny_cifar10(shared / "data")
    entrypoint = spec["entrypoint"]
    for theirs, ours in {
        "/mnt/shared": shared,
        "s3://my-distcl-bucket/checkpoints": bucket,
    }.items():
        assert theirs in entrypoint
        entrypoint = entrypoint.replace(theirs, str(ours))
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    runtime_env["env_vars"]["MLFLOW_TRACKING_URI"] = mlflow_server
    (tmp_path / "runtime_env.yaml").write_text(yaml.safe_dump(runtime_env))
    for name in ("RAY_AUTH_TOKEN", "RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(cluster.token_file))
    # `distcl launch` submits `DISTCL_BIN train OVERRIDES ...`. With this DISTCL_BIN the job's
    # shell runs the entrypoint string as written and then the overrides ("train" becomes $0).
    distcl_bin = "bash -c " + shlex.quote(entrypoint + ' "$@"')
    overrides = [
        "train.use_gpu=false",
        "train.num_workers=2",
        "train.cpus_per_worker=1",
        "train.placement_strategy=STRICT_SPREAD",  # one rank per worker node, like the GPU pods
        *TINY_RUN,
    ]
    argv = ["--address", cluster.address, "--runtime-env", str(tmp_path / "runtime_env.yaml")]
    rc = launch.main([*argv, "--distcl-bin", distcl_bin, *overrides])
    out, err = capsys.readouterr()
    assert rc == 0, f"job did not succeed:\n{out[-5000:]}\n{err[-2000:]}"
    assert "SUCCEEDED" in err
    assert "(wrote)" in out  # `distcl prepare` ran in the job and wrote the .betons
    assert sorted(p.name for p in (shared / "betons").glob("*.beton"))

    run = check_tracked_run(mlflow_server, bucket, epochs=2)
    tags = run.data.tags
    driver, ranks = tags["driver_node_id"], tags["worker_node_ids"].split(",")
    assert driver == cluster.head_node_id()  # the job's driver runs on the head
    assert len(set(ranks)) == 2 and driver not in ranks  # STRICT_SPREAD over the worker nodes
    assert set(ranks) == set(cluster.alive_nodes()) - {driver}
    assert run.data.params["train.storage_path"] == str(bucket)  # the last override won
    assert float(run.data.params["train.cpus_per_worker"]) == 1
    assert_no_local_leftovers(cluster.cwd)
