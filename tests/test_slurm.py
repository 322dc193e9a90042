"""cluster/slurm/distcl.sbatch on this machine: bash and shellcheck accept it, its control flow
(with stand-ins for srun, scontrol, ray and distcl) returns distcl train's exit code and stops
its steps, and a real 2-node run (fake srun/scontrol, real Ray nodes and distcl train) tracks to
an MLflow server given only by MLFLOW_TRACKING_URI."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
CLUSTER = REPO / "cluster"
SBATCH = CLUSTER / "slurm" / "distcl.sbatch"


def test_sbatch_passes_bash_n_and_shellcheck():
    subprocess.run(["bash", "-n", str(SBATCH)], check=True)
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck not installed (apt-get install shellcheck)")
    res = subprocess.run(["shellcheck", str(SBATCH)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout


def _stand_ins(bin_dir: Path, **scripts: str) -> None:
    bin_dir.mkdir()
    for name, text in scripts.items():
        (bin_dir / name).write_text("#!/bin/bash\n" + text)
        (bin_dir / name).chmod(0o755)


# SLURM's commands, so the sbatch script runs on one machine: `srun` runs its command here
# (one process per step), `scontrol show hostnames` expands the two-node list.
FAKE_SLURM = {
    "srun": 'while [[ $# -gt 0 && $1 == -* ]]; do shift; done\nexec "$@"\n',
    "scontrol": '[[ "$1 $2" == "show hostnames" ]] && printf "node1\\nnode2\\n"\n',
}


def _slurm_env(tmp_path: Path, bin_dir: Path, job_id: str) -> dict[str, str]:
    """The environment of a batch script in a 2-node, 1-task-per-node, CPU-only allocation
    (no SLURM_GPUS_ON_NODE), as sbatch sets it, plus what the README asks the user to export."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "SLURM"))}
    submit = tmp_path / "submit"  # sbatch runs the script in the directory it was called from
    submit.mkdir()
    allocation = """
        SLURM_JOB_NAME=distcl SLURM_JOB_NODELIST=node[1-2] SLURM_NODELIST=node[1-2]
        SLURM_JOB_NUM_NODES=2 SLURM_NNODES=2 SLURM_NODEID=0 SLURMD_NODENAME=node1
        SLURM_NTASKS=2 SLURM_NTASKS_PER_NODE=1 SLURM_CPUS_PER_TASK=1 SLURM_CPUS_ON_NODE=1
        SLURM_JOB_CPUS_PER_NODE=1(x2) SLURM_SUBMIT_HOST=login1 RAY_USAGE_STATS_ENABLED=0
    """  # as sbatch sets them for this allocation (and Ray's usage stats off)
    env.update(item.split("=", 1) for item in allocation.split())
    env.update(
        PATH=f"{bin_dir}:{Path(sys.executable).parent}:{env['PATH']}",
        SLURM_JOB_ID=job_id,
        SLURM_JOBID=job_id,
        SLURM_SUBMIT_DIR=str(submit),
        DISTCL_SHARED=str(tmp_path / "shared"),
    )
    return env


def _sbatch(env: dict[str, str], args: list[str], log: Path, timeout_s: float) -> int:
    with open(log, "w") as out:  # a file, not a pipe: Ray may hold it
        return subprocess.run(
            ["bash", str(SBATCH), *args],
            env=env,
            cwd=env["SLURM_SUBMIT_DIR"],
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=timeout_s,
        ).returncode


def test_sbatch_returns_distcl_trains_exit_code_and_stops_its_steps(tmp_path):
    """The script's control flow in 2 s: Ray and the join poll are stand-ins as well."""
    job_id = f"distcltest{os.getpid()}f"
    bin_dir = tmp_path / "bin"
    _stand_ins(
        bin_dir,
        **FAKE_SLURM,
        ray=f'exec -a "fake-ray-{job_id}" sleep 600\n',  # `ray start --block` until stopped
        python=f'if [[ $1 == - ]]; then cat >/dev/null; echo 2; else exec {sys.executable} "$@"; fi\n',
        distcl='echo "fake distcl: $* RAY_ADDRESS=$RAY_ADDRESS"\nexit 7\n',
    )
    env = _slurm_env(tmp_path, bin_dir, job_id)
    env.update(MLFLOW_TRACKING_URI="http://mlflow.invalid:5000", RAY_PORT="6390")
    try:
        rc = _sbatch(env, ["train.epochs=1"], tmp_path / "sbatch.log", timeout_s=120)
    finally:
        left = _kill_marked(f"fake-ray-{job_id}")
    log = (tmp_path / "sbatch.log").read_text()
    assert rc == 7, log  # distcl train's exit code is the job's
    assert "2/2 Ray nodes alive" in log and "stopping Ray on 2 node(s)" in log, log
    assert re.search(r"fake distcl: train .* train\.epochs=1 RAY_ADDRESS=\S+:6390\n", log), log
    assert not (tmp_path / "shared" / f"slurm-{job_id}").exists(), "the job's token was left"
    assert not left, f"`ray start` steps left after the script ended: {left}"


def _kill_marked(marker: str) -> list[int]:
    """SIGKILL every live process whose command line names `marker`; return their pids."""
    found = []
    for d in Path("/proc").iterdir():
        try:
            if d.name.isdigit() and marker in (d / "cmdline").read_text(errors="replace"):
                if (d / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                    found.append(int(d.name))
                    os.kill(int(d.name), signal.SIGKILL)
        except (OSError, ProcessLookupError):
            pass
    return found


@pytest.mark.slow
def test_sbatch_trains_on_two_ray_nodes_tracks_to_mlflow_and_stops_them(tmp_path, mlflow_server):
    """cluster/slurm/distcl.sbatch for real: two `ray start` steps, the real `distcl train` of
    the README's preset on both nodes (one CPU rank each, gloo across the nodes), MLflow as a
    server given only as MLFLOW_TRACKING_URI, data and checkpoints in DISTCL_SHARED."""
    from distcl.cli import main as distcl_main
    from tests.rehearsal import (
        TINY_RUN,
        assert_no_local_leftovers,
        check_tracked_run,
        write_tiny_cifar10,
    )

    job_id = f"distcltest{os.getpid()}"
    marker, shared = f"/tmp/ray_{job_id}", tmp_path / "shared"
    bin_dir = tmp_path / "bin"
    _stand_ins(  # the real distcl, its arguments and RAY_ADDRESS logged on the way
        bin_dir,
        **FAKE_SLURM,
        distcl=f'echo "distcl: $* RAY_ADDRESS=$RAY_ADDRESS"\nexec {VENV_BIN / "distcl"} "$@"\n',
    )
    env = _slurm_env(tmp_path, bin_dir, job_id)
    # The README's order: prepare the .betons once on the shared filesystem, then sbatch.
    write_tiny_cifar10(shared / "data")
    prepare = ["prepare", "--dataset", "cifar10", "--root", f"{shared}/data"]
    assert distcl_main([*prepare, "--out", f"{shared}/betons"]) == 0
    socks = [socket.socket() for _ in range(15)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    p = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    node = (
        "--dashboard-agent-listen-port={} --dashboard-agent-grpc-port={} "
        "--runtime-env-agent-port={} --metrics-export-port={} --node-manager-port={} "
        "--object-manager-port={} --object-store-memory=100000000"
    )
    env.update(
        DISTCL_CONFIG="cifar10_simclr_resnet18",
        MLFLOW_TRACKING_URI=mlflow_server,
        OMP_NUM_THREADS="1",
        RAY_TRAIN_HEALTH_CHECK_INTERVAL_S="0.2",
        RAY_PORT=str(p[0]),
        RAY_DASHBOARD_PORT=str(p[1]),
        DISTCL_JOIN_TIMEOUT_S="120",
        DISTCL_RAY_HEAD_ARGS=f"--ray-client-server-port={p[2]} " + node.format(*p[3:9]),
        DISTCL_RAY_WORKER_ARGS=node.format(*p[9:15]),
    )
    try:
        rc = _sbatch(env, TINY_RUN, tmp_path / "sbatch.log", timeout_s=420)
    finally:
        left = _kill_marked(marker)
        shutil.rmtree(marker, ignore_errors=True)
    log = (tmp_path / "sbatch.log").read_text()
    assert rc == 0, log[-6000:]
    assert "2/2 Ray nodes alive" in log, log[-6000:]
    called = re.search(r"distcl: (train .*) RAY_ADDRESS=(\S+)", log)
    assert called and called.group(2).endswith(f":{p[0]}"), log[-6000:]
    assert called.group(1).split() == [
        "train",
        "--config",
        "cifar10_simclr_resnet18",
        f"data.beton_dir={shared}/betons",
        f"train.storage_path={shared}/checkpoints",
        "train.num_workers=2",
        "train.cpus_per_worker=1",
        "train.use_gpu=false",
        *TINY_RUN,
    ]
    run = check_tracked_run(mlflow_server, shared / "checkpoints", epochs=2)
    ranks = run.data.tags["worker_node_ids"].split(",")
    # One 1-CPU rank per node: the head trains too (the script gives it the nodes' CPUs), and
    # the ranks all-reduce across the two Ray nodes.
    assert len(set(ranks)) == 2 and run.data.tags["driver_node_id"] in ranks
    assert_no_local_leftovers(Path(env["SLURM_SUBMIT_DIR"]))
    assert not (shared / f"slurm-{job_id}").exists(), "the job's token was left behind"
    assert not left, f"Ray processes left after the script ended: {left}"
