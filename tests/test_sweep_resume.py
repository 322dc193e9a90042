"""`distcl sweep --resume` after the sweep's process and its Ray instance were killed: finished
trials keep their results, the rest run, and the MLflow parent run is the same."""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.sweeps import sweep_args, write_space


def _ray_pids(temp_dir: str) -> list[int]:
    """Processes of the Ray instance whose temp dir is `temp_dir` (from /proc cmdlines)."""
    pids = []
    for cmd in glob.glob("/proc/[0-9]*/cmdline"):
        try:
            text = Path(cmd).read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if temp_dir in text and int(cmd.split("/")[2]) != os.getpid():
            pids.append(int(cmd.split("/")[2]))
    return pids


def _finished_trials(sweep_dir: Path) -> dict[str, int]:
    """Trial ids TERMINATED in Tune's saved experiment state -> lines in their result.json."""
    out = {}
    for state in sweep_dir.glob("experiment_state-*.json"):
        for trial_json, _ in json.loads(state.read_text())["trial_data"]:
            t = json.loads(trial_json)
            if t.get("status") == "TERMINATED":
                res = next(sweep_dir.glob(f"trial_fn_{t['trial_id']}_*/result.json"))
                out[t["trial_id"]] = len(res.read_text().splitlines())
    return out


@pytest.mark.slow
def test_killed_sweep_resumes_without_rerunning_finished_trials(tiny_betons, tmp_path):
    space = write_space(
        tmp_path / "space.yaml",
        search="grid",
        metric="knn_acc",
        max_concurrent=1,
        params={"loss.temperature": {"grid": [0.2, 0.5]}},  # killed after the first
    )
    ray_tmp = tempfile.mkdtemp(prefix="rs", dir="/tmp")  # short: Ray's socket paths must fit
    env = {**os.environ, "RAY_TMPDIR": ray_tmp, "RAY_memory_monitor_refresh_ms": "0"}
    env.pop("RAY_ADDRESS", None)  # its own local Ray, never the test session's
    cmd = [
        sys.executable,
        "-m",
        "distcl.cli",
        "sweep",
        *sweep_args(tiny_betons, tmp_path, space, "train.epochs=2"),
    ]
    log = open(tmp_path / "sweep.log", "wb")
    proc = subprocess.Popen(
        cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    sweep_dir = tmp_path / "sweeps" / "s1"
    deadline = time.time() + 400
    while not _finished_trials(sweep_dir) and time.time() < deadline and proc.poll() is None:
        time.sleep(1)
    before = _finished_trials(sweep_dir)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    for _ in range(30):  # raylet, GCS, dashboard and workers, found by their temp dir
        pids = _ray_pids(ray_tmp)
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.5)
    assert not _ray_pids(ray_tmp)
    assert len(before) == 1, (before, (tmp_path / "sweep.log").read_text()[-3000:])

    resume = [
        sys.executable,
        "-m",
        "distcl.cli",
        "sweep",
        "--resume",
        "--name",
        "s1",
        "--storage-path",
        str(tmp_path / "sweeps"),
        "--summary-json",
        str(tmp_path / "summary.json"),
    ]
    try:
        out = subprocess.run(
            resume, env=env, capture_output=True, text=True, timeout=600, start_new_session=True
        )
    finally:
        for pid in _ray_pids(ray_tmp):
            os.kill(pid, signal.SIGKILL)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    after = _finished_trials(sweep_dir)
    assert len(after) == 2
    assert {t: after[t] for t in before} == before  # finished trials got no new results
    summary = json.loads((tmp_path / "summary.json").read_text())
    state = json.loads((sweep_dir / "distcl_sweep.json").read_text())
    assert summary["parent_run_id"] == state["parent_run_id"] and summary["trials"] == 2
