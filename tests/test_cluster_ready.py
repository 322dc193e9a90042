"""What a first GPU-cluster run meets, checked on this CPU machine: where MLflow logs go, which
precision a GPU computes in, and what a checkpoint stores to resume a GPU run exactly.

CUDA is absent here, so the GPU answers (`torch.cuda.*`) are stood in by monkeypatch; what is
tested is distcl's decision on them. The multi-node rehearsals are in test_launch.py.
"""

from __future__ import annotations

import pytest
import torch

from distcl import cli
from distcl.config import schema as config
from distcl.config.schema import ConfigError
from distcl.job.preflight import check_local_tracking, check_tracking_scheme
from distcl.launch import submit as launch
from distcl.runtime import checkpoint, precision
from distcl.tracking import core as tracking

# --- MLflow's order: tracking.uri, else $MLFLOW_TRACKING_URI, else local SQLite ---------------


def test_the_environment_is_used_unless_tracking_uri_is_set(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    cfg = config.load(None, [])
    assert cfg.tracking.uri == ""  # the default leaves the choice to the environment
    assert tracking.resolve_uri(cfg.tracking.uri) == "http://mlflow.example:5000"
    assert tracking.uri_origin(cfg.tracking.uri) == "MLFLOW_TRACKING_URI"
    explicit = config.load(None, ["tracking.uri=http://other:5000"])
    assert tracking.resolve_uri(explicit.tracking.uri) == "http://other:5000"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert tracking.resolve_uri(cfg.tracking.uri) == f"sqlite:///{tmp_path}/mlflow.db"


@pytest.mark.parametrize("uri", ["htp://127.0.0.1:5000", "s3://bucket/mlruns", "ftp://h/x"])
def test_an_unknown_scheme_is_refused_naming_the_supported_ones(uri):
    with pytest.raises(ConfigError, match=r"which MLflow cannot track to; use one of http://"):
        config.load(None, [f"tracking.uri={uri}"])


@pytest.mark.parametrize(
    "uri",
    ["http://h:5000", "https://u:p@h/x", "sqlite:////abs/m.db", "postgresql+psycopg2://h/db",
     "databricks", "databricks://profile", "mlruns-folder", "file:///tmp/mlruns"],
)  # fmt: skip
def test_supported_uris_pass_validation(uri):
    assert config.load(None, [f"tracking.uri={uri}"]).tracking.uri == uri


def test_a_bad_scheme_in_the_environment_is_refused_before_ray(monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "htp://127.0.0.1:5000")
    with pytest.raises(ConfigError, match="MLFLOW_TRACKING_URI='htp://127.0.0.1:5000'"):
        check_tracking_scheme(config.load(None, []))
    assert cli.main(["train", "train.epochs=1"]) == 2  # before data, Ray or MLflow
    assert "has the scheme 'htp'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("uri", "nodes", "fits", "refused"),
    [
        ("sqlite:////x/m.db", 2, True, True),  # workers on another node: another file
        ("sqlite:////x/m.db", 1, False, True),  # autoscaling from an empty head
        ("file:///x/mlruns", 3, True, True),
        ("sqlite:////x/m.db", 1, True, False),  # one machine
        ("http://mlflow:5000", 4, False, False),
    ],
)
def test_a_local_store_is_refused_when_workers_may_run_elsewhere(uri, nodes, fits, refused):
    cfg = config.load(None, [f"tracking.uri={uri}"])
    if refused:
        with pytest.raises(ConfigError, match="MLFLOW_TRACKING_URI=http://HEAD:5000"):
            check_local_tracking(cfg, uri, nodes=nodes, workers_fit_here=fits)
    else:
        check_local_tracking(cfg, uri, nodes=nodes, workers_fit_here=fits)
    off = config.load(None, [f"tracking.uri={uri}", "tracking.enabled=false"])
    check_local_tracking(off, uri, nodes=nodes, workers_fit_here=fits)  # nothing to track


def _launch_args(*argv: str):
    return launch.build_parser().parse_intermixed_args(list(argv))


def test_launch_finds_the_uri_the_job_will_use(monkeypatch):
    env = {"env_vars": {"MLFLOW_TRACKING_URI": "http://from-env:5000"}}
    assert launch.job_tracking_uri(_launch_args("train.epochs=1"), env) == "http://from-env:5000"
    args = _launch_args("tracking.uri=http://explicit:5000")
    assert launch.job_tracking_uri(args, env) == "http://explicit:5000"
    assert launch.job_tracking_uri(_launch_args(), {}) == tracking.DEFAULT_URI
    assert launch.job_tracking_uri(_launch_args("tracking.enabled=false"), {}) == ""


def test_launch_refuses_a_local_store_on_a_remote_cluster():
    with pytest.raises(launch.LaunchError, match="MLFLOW_TRACKING_URI=http://MLFLOW_HOST:5000"):
        launch.check_job_tracking("http://head.example:8265", "sqlite:///mlflow.db")
    launch.check_job_tracking("http://head.example:8265", "http://mlflow:5000")
    launch.check_job_tracking("http://head.example:8265", "")  # tracking off


# --- precision=auto: native bf16 only ----------------------------------------------------------


@pytest.fixture
def fake_cuda(monkeypatch):
    """A CUDA device of a chosen compute capability, as torch reports it (no GPU here)."""
    state = {"capability": (8, 0)}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # counts emulation
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: state["capability"])
    monkeypatch.setattr(torch.version, "hip", None)
    precision._bf16_supported_cached.cache_clear()
    yield state
    precision._bf16_supported_cached.cache_clear()


@pytest.mark.parametrize(
    ("capability", "auto"),
    [((7, 0), "fp32"), ((7, 5), "fp32"), ((8, 0), "bf16"), ((9, 0), "bf16")],
    ids=["V100", "T4", "A100", "H100"],
)
def test_auto_precision_uses_bf16_only_where_the_gpu_has_it(fake_cuda, capability, auto):
    fake_cuda["capability"] = capability
    assert precision.resolve_precision("auto", "cuda") == auto
    assert precision.resolve_precision("fp32", "cuda") == "fp32"
    assert precision.resolve_precision("bf16", "cuda") == auto  # asked, but emulated: fp32
    assert precision.use_bf16("auto", torch.device("cuda", 0)) == (auto == "bf16")


# --- checkpoints store the CUDA RNG once CUDA is in use ----------------------------------------


def test_checkpoint_round_trips_the_cuda_rng_state(monkeypatch, tmp_path):
    cuda_state = torch.arange(16, dtype=torch.uint8)
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda *a, **k: cuda_state.clone())
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, *a, **k: restored.append(s))
    checkpoint.save(tmp_path, {"rng": checkpoint.rng_state()})
    state = checkpoint.load(tmp_path)  # weights_only=True
    assert torch.equal(state["rng"]["cuda"], cuda_state)
    checkpoint.set_rng_state(state["rng"])
    assert len(restored) == 1 and torch.equal(restored[0], cuda_state)


def test_a_gpu_checkpoint_resumes_on_a_cpu_machine(tmp_path):
    state = checkpoint.rng_state()
    assert "cuda" not in state  # CUDA never initialised here
    state["cuda"] = torch.zeros(16, dtype=torch.uint8)  # as written by a GPU run
    checkpoint.set_rng_state(state)  # no CUDA: the CUDA state is skipped, the rest restored


def test_the_experiment_follows_mlflows_order(monkeypatch):
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    cfg = config.load(None, ["data.dataset=cifar10"])
    assert tracking.experiment_name(cfg) == "distcl-cifar10"
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "team-runs")  # as rayjob.yaml sets it
    assert tracking.experiment_name(cfg) == "team-runs"
    named = config.load(None, ["tracking.experiment=mine"])
    assert tracking.experiment_name(named) == "mine"
