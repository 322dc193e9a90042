"""Fault tolerance with real processes: SIGKILL a Ray Train worker mid-run, corrupt a checkpoint.

The run must finish by itself, with each epoch exactly once in the MLflow history.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest
import torch

from distcl import checkpoint, config
from tests.test_train_e2e import tiny_overrides

pytestmark = pytest.mark.slow
EPOCHS = 4


def _cfg(betons: Path, tmp: Path, name: str, epochs: int = EPOCHS, batch: int = 64):
    return config.load(
        None,
        tiny_overrides(
            betons,
            tmp,
            f"train.epochs={epochs}",
            "train.max_failures=1",
            f"train.global_batch={batch}",
            "eval.knn_every=0",
            "eval.baselines=false",
            "eval.probe=false",
            "train.keep_checkpoints=3",
            f"train.run_name={name}",
            "train.seed=7",
        ),
    )


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
    from distcl.driver import fit

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


def _final_loss(tmp: Path, run_id: str) -> float:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp / 'mlflow.db'}")
    return max(client.get_metric_history(run_id, "loss"), key=lambda m: m.step).value


def test_killed_worker_resumes_without_lost_or_duplicated_epochs(
    ray_session, tiny_betons, tmp_path
):
    from distcl.driver import fit

    clean = fit(_cfg(tiny_betons, tmp_path / "clean", "clean"))
    thread, out = _fit_in_thread(_cfg(tiny_betons, tmp_path / "killed", "killed"))
    _wait_for_checkpoints(tmp_path / "killed" / "runs", 1, thread, out)
    killed_pid = _kill_one_worker(ray_session)
    thread.join(timeout=600)
    assert "error" not in out, out.get("error")
    summary = out["summary"]
    state = checkpoint.load(summary["checkpoint"])
    assert state["epoch"] == EPOCHS
    assert _history(tmp_path / "killed", summary["mlflow_run_id"]) == list(range(1, EPOCHS + 1))
    with pytest.raises(ProcessLookupError):
        os.kill(killed_pid, 0)
    clean_loss = _final_loss(tmp_path / "clean", clean["mlflow_run_id"])
    killed_loss = _final_loss(tmp_path / "killed", summary["mlflow_run_id"])
    assert abs(killed_loss - clean_loss) / clean_loss < 0.1, (killed_loss, clean_loss)


@pytest.mark.skip(
    reason="open (issue 10): after the kill, the restarted run finished but the fallback warning "
    "was not seen in the captured output; needs a look at which checkpoint Ray hands back"
)
def test_corrupt_latest_checkpoint_falls_back_to_previous(
    ray_session, tiny_betons, tmp_path, capfd
):
    storage = tmp_path / "runs"
    # Small batches and spare epochs keep the run going while the test corrupts and kills.
    thread, out = _fit_in_thread(_cfg(tiny_betons, tmp_path, "corrupt", epochs=5, batch=16))
    _wait_for_checkpoints(storage, 2, thread, out)
    _kill_one_worker(ray_session)
    # While Ray restarts the worker group, corrupt every checkpoint but the oldest: whichever one
    # Ray hands back as the latest is unreadable, and the run must fall back past it.
    for ckpt in _checkpoints(storage)[1:]:
        (ckpt / "state.pt").write_bytes(b"not a checkpoint")
    thread.join(timeout=600)
    assert "error" not in out, out.get("error")
    assert "resuming from the previous checkpoint" in capfd.readouterr().out
    summary = out["summary"]
    assert checkpoint.load(summary["checkpoint"])["epoch"] == 5
    assert _history(tmp_path, summary["mlflow_run_id"]) == [1, 2, 3, 4, 5]


def test_load_previous_skips_unreadable_checkpoints(tmp_path):
    for i, payload in enumerate([{"epoch": 1}, {"epoch": 2}, None]):
        d = tmp_path / f"checkpoint_2026-01-0{i + 1}"
        if payload is None:
            d.mkdir()
            (d / "state.pt").write_bytes(b"\0" * 10)
        else:
            checkpoint.save(d, {"epoch": torch.tensor(payload["epoch"])})
    latest = tmp_path / "checkpoint_2026-01-03"
    with pytest.raises(checkpoint.CheckpointError, match="checkpoint_2026-01-03"):
        checkpoint.load(latest)
    state, used = checkpoint.load_previous(latest, RuntimeError("corrupt"))
    assert used.name == "checkpoint_2026-01-02" and int(state["epoch"]) == 2
