"""benchmarks/gpu_check.sh: its dry run (every stage of the GPU check, on CPU), its exit on a
machine without a GPU, and shellcheck.

The dry run is the script's only test: `distcl prepare | train | eval` for real, an `mlflow
server` over HTTP, a Ray Train worker SIGKILLed and the run resumed. It must leave no process
behind: everything the script starts carries `GPU_CHECK_OWNER=<its work dir>` in its environment.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
STAGES = ("env", "data", "mlflow", "train", "metrics", "eval", "teardown")


def _run_script(extra_env: dict[str, str], timeout: float) -> tuple[int, str, float]:
    """Run the script in its own session; on timeout SIGTERM its group (its EXIT trap stops what
    it started), then SIGKILL. Returns (exit code, stdout + stderr, wall seconds)."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    env.update({"PY": sys.executable, **extra_env})
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        ["bash", str(SCRIPT)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            out, _ = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
        pytest.fail(f"gpu_check.sh ran over {timeout} s; its output:\n{out[-6000:]}")
    return proc.returncode, out, time.perf_counter() - t0


def _processes_of(work: str) -> list[str]:
    """Live processes carrying the script's marker, or naming its work dir on their command line."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            environ = (proc / "environ").read_bytes().split(b"\0")
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # gone, or not ours to read
            continue
        if f"GPU_CHECK_OWNER={work}".encode() in environ or work in cmdline:
            found.append(f"{proc.name}: {cmdline[:120]}")
    return found


def _no_gpu() -> bool:
    import torch

    return not torch.cuda.is_available()


@pytest.mark.slow
def test_dry_run_runs_every_stage_on_cpu_and_leaves_nothing_behind():
    code, out, wall = _run_script({"GPU_CHECK_DRY_RUN": "1", "NUMBA_OPT": "0"}, timeout=600)
    print(f"gpu_check.sh dry run: {wall:.0f} s wall\n{out[-3000:]}")
    work = re.search(r"^gpu_check: work dir (\S+)$", out, re.M)
    assert work, out[-3000:]
    work = work.group(1)
    try:
        lines = {
            m.group(1): m.group(0)
            for m in re.finditer(r"^gpu_check: (\w+) (?:ok|FAILED|skipped)\b.*$", out, re.M)
        }
        assert code == 0, out[-4000:]
        for stage in STAGES:
            assert re.match(rf"gpu_check: {stage} ok \d+\.\ds ", lines.get(stage, "")), (
                f"stage {stage}: {lines.get(stage)!r}\n{out[-4000:]}"
            )
        train = lines["train"]
        assert re.search(r"RayTrainWorker pid \d+ in (after )?epoch [23]\b", train), train
        assert re.search(r"resumed at epoch [12], step \d+", train), train
        assert "loss once per epoch 1..3" in lines["metrics"], lines["metrics"]
        assert "peak GPU memory n/a" in lines["metrics"], lines["metrics"]
        assert re.search(r"knn_acc [\d.]+%,linear_acc [\d.]+%", lines["eval"]), lines["eval"]
        assert lines["teardown"].endswith("; 0 still alive"), lines["teardown"]
        assert re.search(r"^gpu_check: summary ok [\d.]+s all 7 stages ok$", out, re.M), out
        assert not Path(work).exists(), "the work dir of a passing run is removed"
        assert _processes_of(work) == []
    finally:
        for line in _processes_of(work):  # never let a failed check leak processes
            os.kill(int(line.split(":")[0]), signal.SIGKILL)


@pytest.mark.skipif(not _no_gpu(), reason="this machine has a GPU: the script runs the full check")
def test_without_a_gpu_it_says_so_and_exits_0():
    code, out, wall = _run_script({}, timeout=120)
    assert code == 0, out
    assert out.startswith("gpu_check: no CUDA GPU visible to torch"), out
    assert "work dir" not in out and " ok " not in out  # no stage ran
    assert wall < 60


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_shellcheck_passes():
    result = subprocess.run(
        ["shellcheck", str(SCRIPT)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
