"""`distcl launch` against real Ray nodes on this machine (all slow).

The module fixture starts three `ray start --block` processes on 127.0.0.1, shaped like
cluster/kuberay/rayjob.yaml: a head with 0 CPUs (the manifests' `num-cpus: "0"`: it runs the
job's driver and no training worker) and two worker nodes with 1 CPU each (its two worker
replicas), with token auth, their own temp dir and ports. They are always stopped by process
tree, never with `ray stop`, which would also stop other Ray instances of the test session.
Most jobs run a stand-in `distcl` (prints its argv, exits as asked) to test the launch
mechanics; one runs the RayJob manifest's entrypoint with the real `distcl`, tracking to a real
MLflow server. The SLURM script's real run is in tests/test_slurm.py.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from distcl.launch import submit as launch
from tests.localray import LocalRayCluster
from tests.rehearsal import (
    TINY_RUN,
    assert_no_local_leftovers,
    check_tracked_run,
    write_tiny_cifar10,
)

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
FAKE_DISTCL = """import json, os, sys, time
opts = dict(a.split("=", 1) for a in sys.argv[1:] if "=" in a and not a.startswith("-"))
print("fake-distcl argv=" + json.dumps(sys.argv[1:]), flush=True)
print("fake-distcl MLFLOW_TRACKING_URI=" + os.environ.get("MLFLOW_TRACKING_URI", ""), flush=True)
print("fake-distcl cwd=" + os.getcwd(), flush=True)
time.sleep(float(opts.get("test.sleep_s", 0)))
sys.exit(int(opts.get("test.exit_code", 0)))
"""


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
    cmd = [
        sys.executable,
        "-m",
        "distcl.launch.submit",
        "--address",
        cluster.address,
        "--status",
        "x",
    ]
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
