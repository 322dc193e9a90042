"""Fault tolerance with real processes: SIGKILL a Ray Train worker mid-run, corrupt checkpoints.

The run must finish by itself, with each epoch exactly once in the MLflow history. A checkpoint
that does not load is named in a warning and passed over for the newest older one, both after a
worker-group restart and on `distcl train --resume`.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest
import torch

from distcl.config import schema as config
from distcl.runtime import checkpoint
from tests.tiny import tiny_overrides

pytestmark = pytest.mark.slow


def _checkpoints(storage: Path) -> list[Path]:
    return sorted(p for p in storage.glob("*/checkpoint_*") if p.is_dir())


def _kill_one_worker(ray_ctx) -> int:
    """SIGKILL one live training worker, found by its pid through Ray's state API."""
    from ray.util.state import list_actors

    actors = list_actors(
        address=f"http://{ray_ctx.dashboard_url}",
        filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")],
    )
    assert actors, "no live training worker to kill (the run ended too early)"
    pid = actors[0]["pid"]
    os.kill(pid, signal.SIGKILL)
    return pid


def _fit_in_thread(cfg):
    from distcl.job.driver import fit

    out: dict = {}

    def target():
        try:
            out["summary"] = fit(cfg)
        except BaseException as exc:  # surfaced by the test
            out["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, out


def _wait_for_checkpoints(storage: Path, n: int, thread: threading.Thread, out: dict) -> Path:
    deadline = time.time() + 900  # bounded; the loop also ends when the run ends
    while time.time() < deadline and thread.is_alive():
        found = _checkpoints(storage)
        if len(found) >= n and (found[-1] / "state.pt").exists():
            return found[-1]
        time.sleep(0.1)
    raise AssertionError(f"no checkpoint #{n} appeared under {storage}: {out.get('error')!r}")


def _history(tmp: Path, run_id: str) -> list[int]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp / 'mlflow.db'}")
    return sorted(m.step for m in client.get_metric_history(run_id, "loss"))


def _system_metric_times(tmp: Path, run_id: str) -> list[float]:
    """Seconds since the epoch of every CPU sample the system-metrics monitor logged."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp / 'mlflow.db'}")
    history = client.get_metric_history(run_id, "system/cpu_utilization_percentage")
    return [m.timestamp / 1000 for m in history]


def _corrupt(ckpt: Path) -> None:
    (ckpt / "state.pt").write_bytes(b"not a checkpoint")


def test_corrupt_checkpoint_falls_back_after_a_worker_restart_and_on_resume(
    ray_session, tiny_betons, tmp_path, capfd
):
    """One run serves both ways a checkpoint is handed back: a worker-group restart inside the
    run, then `fit(resume=True)` (what `distcl train --resume` calls) after it finished."""
    from mlflow.tracking import MlflowClient

    from distcl.job.driver import fit

    storage = tmp_path / "runs"
    # Small batches and spare epochs keep the run going while the test kills and corrupts;
    # keeping every checkpoint keeps the first one on disk as the readable fallback.
    cfg = config.load(
        None,
        tiny_overrides(
            tiny_betons,
            tmp_path,
            "train.epochs=7",
            "train.global_batch=16",
            "train.keep_checkpoints=7",
            "train.max_failures=1",
            "train.run_name=corrupt",
            "train.seed=7",
            "eval.knn_every=0",
            "eval.baselines=false",
            "eval.probe=false",
            "eval.semi=false",
            "eval.tsne_points=0",
            "tracking.log_model=false",
            "tracking.system_metrics_interval=1",
        ),
    )
    thread, out = _fit_in_thread(cfg)
    # A restarted group gets Ray's latest *registered* checkpoint, and a folder is on disk before
    # Ray registers it. Each worker's report queue holds one result, so once folder 4 exists,
    # Ray has taken report 2 from both workers: checkpoints 1 and 2 (at least) are registered.
    _wait_for_checkpoints(storage, 4, thread, out)
    killed_pid = _kill_one_worker(ray_session)
    killed_at = time.time()
    first, *corrupted = _checkpoints(storage)
    for ckpt in corrupted:  # whichever of these Ray hands back, it does not load
        _corrupt(ckpt)
    thread.join(timeout=600)
    text = capfd.readouterr().out
    assert "error" not in out, out.get("error")
    with pytest.raises(ProcessLookupError):  # the run finished on a new worker group
        os.kill(killed_pid, 0)
    warned = [c for c in corrupted if f"checkpoint {c}/state.pt is corrupt or unreadable" in text]
    assert warned, f"no warning named any of {corrupted}"
    assert f"resuming from the previous checkpoint {first}\n" in text
    assert "distcl: resumed at epoch 1, step" in text
    summary = out["summary"]
    assert checkpoint.load(summary["checkpoint"])["epoch"] == 7
    # The epochs after the first ran again after the fallback to checkpoint 1; MLflow still
    # holds each epoch exactly once, nothing lost and nothing duplicated.
    assert _history(tmp_path, summary["mlflow_run_id"]) == list(range(1, 8))
    # The driver's system-metrics monitor outlives the worker group it samples around.
    assert max(_system_metric_times(tmp_path, summary["mlflow_run_id"])) > killed_at

    # --resume: the finished run's newest checkpoint is Ray's latest; corrupt exactly that one.
    newest = Path(summary["checkpoint"])
    previous = _checkpoints(storage)[-2]
    assert checkpoint.load(previous)["epoch"] == 6
    _corrupt(newest)
    resumed_at = time.time()
    again = fit(cfg, resume=True)
    text = capfd.readouterr().out
    assert f"checkpoint {newest}/state.pt is corrupt or unreadable" in text
    assert f"resuming from the previous checkpoint {previous}\n" in text
    assert "distcl: resumed at epoch 6, step" in text
    assert again["run_dir"] == summary["run_dir"]
    assert again["mlflow_run_id"] == summary["mlflow_run_id"]
    assert Path(again["checkpoint"]) != newest
    assert checkpoint.load(again["checkpoint"])["epoch"] == 7
    assert _history(tmp_path, again["mlflow_run_id"]) == list(range(1, 8))
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert client.get_run(again["mlflow_run_id"]).info.status == "FINISHED"
    # The resumed driver samples system metrics again.
    assert max(_system_metric_times(tmp_path, again["mlflow_run_id"])) > resumed_at


def test_load_with_fallback_passes_over_unreadable_checkpoints(tmp_path):
    import pyarrow.fs

    for i, epoch in enumerate([1, 2, None, None]):
        d = tmp_path / f"checkpoint_2026-01-0{i + 1}"
        if epoch is None:
            d.mkdir()
            (d / "state.pt").write_bytes(b"\0" * 10)
        else:
            checkpoint.save(d, {"epoch": torch.tensor(epoch)})
    (tmp_path / "checkpoint_2026-01-05").mkdir()  # newer than `latest`: never a fallback
    (tmp_path / "checkpoint_manager_snapshot.json").write_text("{}")
    latest = tmp_path / "checkpoint_2026-01-04"
    with pytest.raises(checkpoint.CheckpointError, match="checkpoint_2026-01-04/state.pt is"):
        checkpoint.load(latest)
    for fs in (None, pyarrow.fs.LocalFileSystem()):  # a Ray checkpoint's filesystem, or local
        state, used, skipped = checkpoint.load_with_fallback(latest, fs)
        assert used == str(tmp_path / "checkpoint_2026-01-02") and int(state["epoch"]) == 2
        assert [str(e).split()[1] for e in skipped] == [
            f"{tmp_path}/checkpoint_2026-01-0{i}/state.pt" for i in (4, 3)
        ]
    state, used, skipped = checkpoint.load_with_fallback(tmp_path / "checkpoint_2026-01-02")
    assert int(state["epoch"]) == 2 and not skipped
    for d in ("checkpoint_2026-01-01", "checkpoint_2026-01-02"):
        (tmp_path / d / "state.pt").unlink()
    with pytest.raises(checkpoint.CheckpointError, match="no readable checkpoint in"):
        checkpoint.load_with_fallback(latest)
