"""Shared fixtures: one local Ray instance, one MLflow server, tiny datasets in native formats.

Every process a fixture starts is stopped by the pid it started, so nothing outlives the tests.
"""

from __future__ import annotations

import gzip
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("TQDM_DISABLE", "1")
# LLVM optimisation level of numba, which compiles FFCV's pipelines in every process that
# builds a loader (each Ray Train worker, each trial, each restart). Measured on the 4,096-image
# Fashion-MNIST loader: at level 0 the first batch takes 13 s instead of 23-27 s, and the
# compiled loader runs 4-7x slower (1,100-2,000 vs 7,600-8,500 images/s). The tests' few
# hundred images load in milliseconds either way. Ray workers and subprocesses inherit this.
os.environ.setdefault("NUMBA_OPT", "0")
VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write `array` (uint8) in the idx format of MNIST/Fashion-MNIST, gzipped."""
    dims = array.shape
    header = struct.pack(">HBB", 0, 0x08, len(dims)) + struct.pack(f">{len(dims)}I", *dims)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def make_fmnist_files(root: Path, n_train: int = 600, n_test: int = 200) -> Path:
    """Tiny Fashion-MNIST-format files (idx .gz, as the Debian package ships them)."""
    from distcl.data.sources import synthetic

    root.mkdir(parents=True, exist_ok=True)
    for split, n, (img_name, lbl_name) in (
        ("train", n_train, ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")),
        ("test", n_test, ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")),
    ):
        src = synthetic(split, n=n, resolution=28, classes=4)
        write_idx(root / f"{img_name}.gz", src.images[..., 0])
        write_idx(root / f"{lbl_name}.gz", src.labels)
    return root


@pytest.fixture(scope="session")
def fmnist_root(tmp_path_factory) -> Path:
    return make_fmnist_files(tmp_path_factory.mktemp("fmnist-raw"))


@pytest.fixture(scope="session")
def tiny_betons(fmnist_root, tmp_path_factory) -> Path:
    """Train and test `.beton`s of the tiny Fashion-MNIST-format data."""
    from distcl.data.beton import prepare

    out = tmp_path_factory.mktemp("betons")
    for split in ("train", "test"):
        prepare("fashion_mnist", split, root=str(fmnist_root), out=str(out))
    return out


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray instance (2 CPUs, loopback) for the whole test session."""
    import ray

    ctx = ray.init(
        num_cpus=2,
        dashboard_host="127.0.0.1",
        include_dashboard=True,
        log_to_driver=True,
        configure_logging=False,
    )
    node = ray._private.worker._global_node
    pids = [p.process.pid for procs in node.all_processes.values() for p in procs]
    yield ctx
    ray.shutdown()
    for pid in pids:  # anything ray.shutdown() left behind
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real `mlflow server` on 127.0.0.1 with a SQLite store; yields its http:// URI."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    cmd = [
        str(VENV_BIN / "mlflow"),
        "server",
        "--backend-store-uri",
        f"sqlite:///{root}/mlflow.db",
        "--artifacts-destination",
        str(root / "artifacts"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    log = open(root / "server.log", "wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180  # slow to start on a loaded 2-core machine
    while time.time() < deadline:
        try:
            urllib.request.urlopen(uri + "/health", timeout=2)
            break
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError((root / "server.log").read_text()[-2000:]) from None
            time.sleep(0.5)
    else:
        os.killpg(proc.pid, signal.SIGKILL)
        raise RuntimeError("mlflow server did not become healthy in 180 s")
    yield uri
    os.killpg(proc.pid, signal.SIGTERM)  # the server and its gunicorn/uvicorn children
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
    log.close()


@pytest.fixture(scope="session")
def server_fit(ray_session, tiny_betons, mlflow_server, tmp_path_factory):
    """`distcl train` of the tiny config, once per session, logging to the real MLflow server
    (shared by test_tracking.py and the browser test in test_mlflow_ui.py)."""
    from distcl.config import schema as config
    from distcl.job.driver import fit
    from tests.tiny import tiny_overrides

    tmp = tmp_path_factory.mktemp("tracking-e2e")
    overrides = tiny_overrides(
        tiny_betons,
        tmp,
        f"tracking.uri={mlflow_server}",
        "tracking.system_metrics_interval=1",
        "tracking.register=true",
    )
    cfg = config.load(None, overrides)
    summary = fit(cfg, summary_json=str(tmp / "summary.json"))
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_server)
    return cfg, summary, client, client.get_run(summary["mlflow_run_id"])
