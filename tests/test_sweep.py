"""`distcl sweep` end to end: Ray Tune trials that each run a Ray Train job, on tiny .betons.

The tiny synthetic data saturates kNN accuracy at 1.0 for every trial (ties: ASHA stops none),
so the ASHA sweep ranks by the training loss instead: the same scheduler path as
`metric: knn_acc`, with clear losers (the sigmoid loss sits near 2x NT-Xent's after one epoch).
"""

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
import yaml

from distcl.config import schema as config
from distcl.sweep.space import load_space

TINY = [
    "model.width=4",
    "model.feat_dim=0",  # 8 x width: the tiny net
    "model.proj_hidden=32",
    "model.proj_dim=16",
    "train.global_batch=64",
    "train.num_workers=1",
    "eval.knn_train_images=0",
    "eval.baselines=false",
    "data.max_images=256",
    "optim.warmup_epochs=0",
    "eval.semi=false",  # as in the shipped spaces: trials skip fine-tuning, t-SNE and the model
    "eval.tsne_points=0",
    "tracking.log_model=false",
]


def write_space(path: Path, **doc) -> Path:
    path.write_text(yaml.safe_dump(doc))
    return path


def sweep_args(betons: Path, tmp: Path, space: Path, *extra: str) -> list[str]:
    return [
        "--space",
        str(space),
        "--storage-path",
        str(tmp / "sweeps"),
        "--name",
        "s1",
        f"data.beton_dir={betons}",
        f"tracking.uri=sqlite:///{tmp / 'mlflow.db'}",
        *TINY,
        *extra,
    ]


def test_space_errors_name_the_setting(tmp_path):
    bad = write_space(tmp_path / "a.yaml", params={"loss.temperature": {"loguniform": [0, 1]}})
    with pytest.raises(config.ConfigError, match="loguniform needs lo > 0"):
        load_space(bad)
    bad = write_space(tmp_path / "b.yaml", params={"data.dataset": {"choice": ["cifar10"]}})
    with pytest.raises(config.ConfigError, match="cannot be swept"):
        load_space(bad)
    space = load_space(
        write_space(tmp_path / "c.yaml", params={"loss.name": {"choice": ["ntxent", "supcon"]}})
    )
    unlabelled = {**config.load(None).to_flat(), "data.dataset": "stl10", "data.split": "unlabeled"}
    with pytest.raises(config.ConfigError, match="supcon.*needs class labels"):
        space.check_against(unlabelled)
    for path in sorted(Path("tune").glob("*.yaml")):  # the shipped spaces parse and validate
        load_space(path).check_against(config.load(None).to_flat())


def test_optuna_missing_is_a_clear_error(tmp_path):
    from distcl.sweep.run import _search_alg

    space = load_space(
        write_space(
            tmp_path / "o.yaml",
            search="optuna",
            params={"loss.temperature": {"loguniform": [0.05, 1.0]}},
        )
    )
    try:
        import optuna  # noqa: F401
    except ImportError:
        with pytest.raises(config.ConfigError, match="pip install 'distcl\\[optuna\\]'"):
            _search_alg(space)
    else:
        assert type(_search_alg(space)).__name__ == "OptunaSearch"


def _draws(space, n: int) -> list[dict]:
    """The first `n` trial configs the space's search algorithm generates (no Ray needed)."""
    from ray.tune.experiment import Experiment

    from distcl.sweep.run import _search_alg
    from distcl.sweep.space import param_space

    alg = _search_alg(space)  # no concurrency cap: every trial is generated at once
    alg.add_configurations(
        [Experiment("e", run=lambda _: None, config=param_space(space), num_samples=n)]
    )
    return [alg.next_trial().config for _ in range(n)]


def test_a_seeded_space_draws_the_same_trials_every_time(tmp_path):
    doc = {"params": {"loss.temperature": {"loguniform": [0.05, 1.0]}}, "num_samples": 4}
    seeded = load_space(write_space(tmp_path / "s.yaml", seed=0, **doc))
    assert seeded.seed == 0 and seeded.describe()["sweep.seed"] == 0
    first = _draws(seeded, 4)
    assert _draws(seeded, 4) == first
    temps = [c["loss.temperature"] for c in first]
    assert len(set(temps)) == 4 and all(0.05 <= t <= 1.0 for t in temps)
    assert _draws(load_space(write_space(tmp_path / "t.yaml", seed=1, **doc)), 4) != first
    unseeded = load_space(write_space(tmp_path / "u.yaml", **doc))
    assert _draws(unseeded, 4) != _draws(unseeded, 4)  # fresh draws each sweep
    with pytest.raises(config.ConfigError, match="seed must be an integer >= 0"):
        load_space(write_space(tmp_path / "v.yaml", seed=-1, **doc))
    assert load_space("tune/fmnist_default.yaml").seed == 0  # the README's sweep reruns


@pytest.fixture(scope="module")
def asha_sweep(ray_session, tiny_betons, tmp_path_factory):
    from distcl.sweep import run as sweep

    tmp = tmp_path_factory.mktemp("sweep")
    space = write_space(
        tmp / "space.yaml",
        search="grid",
        metric="loss",
        mode="min",
        max_concurrent=2,
        params={
            "loss.temperature": {"grid": [0.3, 1000.0]},
            "loss.name": {"grid": ["ntxent", "logistic"]},
        },
        asha={"grace_period": 1, "reduction_factor": 4, "max_t": 3},
    )
    args = sweep.build_parser().parse_args(
        sweep_args(tiny_betons, tmp, space, "train.cpus_per_worker=0.5")
    )
    t0 = time.perf_counter()
    summary = sweep.run_sweep(args)
    print(f"ASHA sweep of 4 trials: {time.perf_counter() - t0:.0f} s")
    return tmp, summary


@pytest.mark.slow
def test_sweep_completes_and_asha_stops_a_bad_trial(asha_sweep):
    tmp, summary = asha_sweep
    assert summary["trials"] == 4
    epochs = {r["trial_id"]: r["epochs"] for r in summary["rows"]}
    assert sorted(epochs.values())[0] < 3 and max(epochs.values()) == 3, epochs
    assert summary["stopped_early"] >= 1
    best = summary["best"]
    assert best["status"] == "finished" and best["epochs"] == 3
    assert best["loss"] == min(r["loss"] for r in summary["rows"] if r["status"] == "finished")


@pytest.mark.slow
def test_mlflow_has_parent_and_one_child_per_trial(asha_sweep):
    from mlflow.tracking import MlflowClient

    tmp, summary = asha_sweep
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp / 'mlflow.db'}")
    parent = client.get_run(summary["parent_run_id"])
    assert parent.data.tags["role"] == "sweep" and parent.info.status == "FINISHED"
    children = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'",
    )
    assert len(children) == 4
    assert {c.data.tags["trial_id"] for c in children} == {r["trial_id"] for r in summary["rows"]}
    assert all(c.data.tags["role"] == "sweep-trial" for c in children)
    finished = [c for c in children if c.info.status == "FINISHED"]
    assert finished and all("linear_acc" in c.data.metrics for c in finished)
    assert all(len(client.get_metric_history(c.info.run_id, "loss")) >= 1 for c in children)
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {
        "trials.md",
        "trials.csv",
        "accuracy_vs_temperature.png",
        "best_config.yaml",
    } <= artifacts


@pytest.mark.slow
def test_best_config_trains(asha_sweep, tmp_path):
    from distcl.job import fit

    _, summary = asha_sweep
    cfg = config.load(
        summary["best_config"],
        [
            "train.epochs=1",
            f"train.storage_path={tmp_path}",
            f"tracking.uri=sqlite:///{tmp_path / 'm.db'}",
        ],
    )
    assert cfg.loss.name == summary["best"]["loss.name"] and cfg.model.width == 4
    assert cfg.loss.temperature == summary["best"]["loss.temperature"]
    assert 0.0 <= fit(cfg)["knn_acc"] <= 1.0


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
