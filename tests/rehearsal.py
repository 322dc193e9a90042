"""What the cluster rehearsals share (tests/test_launch.py, tests/test_slurm.py): the tiny CPU
overrides appended to the real launch commands, tiny CIFAR-10-format files, and the checks of
the MLflow run, the checkpoints and the working folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

TINY_RUN = [
    "model.arch=small_cnn",
    "model.width=8",
    "model.feat_dim=0",  # 8 x width
    "model.proj_hidden=64",
    "model.proj_dim=32",
    "data.resolution=32",  # the tiny CIFAR-10 files' size
    "data.loader_workers=1",
    "train.epochs=2",
    "train.time_budget_s=0",  # the default preset's budget is for make train
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

    from distcl.job.driver import RUN_FILE

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
