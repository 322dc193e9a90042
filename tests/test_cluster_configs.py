"""cluster/: the files parse, pass Ray's own checks, agree with each other and with the README;
`distcl launch` parses its arguments and fails fast with what to check on a dead address.

What the launcher check covers, exactly: `prepare_config` merges each YAML with the provider's
`ray/autoscaler/<provider>/defaults.yaml` and fills per-node-type worker counts, then
`validate_config` checks the result against `ray/autoscaler/ray-schema.json` (no unknown keys,
integer resources, docker options) and that head_node_type exists and the min_workers sum fits
max_workers. Neither contacts a cloud (the test forbids network connections while they run), so
instance types, images, IAM roles and EFS/Filestore addresses are not checked.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from distcl import launch
from distcl.config import Config

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
SBATCH = CLUSTER / "slurm" / "distcl.sbatch"
README = (CLUSTER / "README.md").read_text()
LAUNCHERS = ["aws.yaml", "gcp.yaml"]
CONFIG_KEYS = set(Config().to_flat())


def _load(name: str) -> dict:
    return yaml.safe_load((CLUSTER / name).read_text())


def _readme_commands() -> list[str]:
    """Lines of the README's fenced code blocks."""
    blocks = re.findall(r"```\n(.*?)```", README, flags=re.S)
    return [line for block in blocks for line in block.splitlines() if line.strip()]


def _overrides(text: str) -> list[str]:
    words = shlex.split(text.replace("\\\n", " "), comments=True)
    return [w for w in words if re.match(r"^[a-z_]+\.[a-z_]+=", w)]


def test_every_yaml_under_cluster_parses_to_a_mapping():
    files = sorted(CLUSTER.rglob("*.yaml"))
    assert len(files) >= 5
    for path in files:
        docs = list(yaml.safe_load_all(path.read_text()))
        assert docs and all(isinstance(d, dict) and d for d in docs), path


@pytest.mark.parametrize("name", LAUNCHERS)
def test_launcher_yaml_passes_rays_validation_offline(name, monkeypatch):
    from ray.autoscaler._private.util import prepare_config, validate_config

    def no_network(*args, **kwargs):
        raise AssertionError(f"validation tried to reach the network: {args}")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    raw = _load(name)
    cfg = prepare_config(copy.deepcopy(raw))
    validate_config(cfg)
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0 and head["max_workers"] == 0
    gpu_types = [t for t in types.values() if t["resources"].get("GPU", 0) == 8]
    assert len(gpu_types) >= 2 and all(t["max_workers"] >= 1 for t in gpu_types)
    setup = " ".join(cfg["setup_commands"])
    for pkg in ("pkg-config", "libopencv-dev", "libturbojpeg0-dev"):
        assert pkg in setup
    assert "pip install" in setup and "~/distcl" in setup and cfg["file_mounts"]["~/distcl"] == "."
    run = " ".join(cfg["docker"]["run_options"])
    assert "MLFLOW_TRACKING_URI=http" in run and "RAY_AUTH_MODE=token" in run
    assert "/mnt/shared" in run and "~/.ray/auth_token" in cfg["file_mounts"]
    assert "--dashboard-port=8265" in " ".join(cfg["head_start_ray_commands"])


def test_one_ray_version_everywhere():
    import ray

    text = "\n".join(p.read_text() for p in CLUSTER.rglob("*") if p.is_file())
    tags = set(re.findall(r"rayproject/ray:(\d+\.\d+\.\d+)-py311-gpu", text))
    versions = {str(v) for v in re.findall(r'rayVersion: "([\d.]+)"', text)}
    assert tags | versions == {ray.__version__}, "cluster images must run the client's Ray"
    assert "FROM ${RAY_IMAGE}" in (CLUSTER / "Dockerfile").read_text()


def test_rayjob_manifest_has_required_fields():
    job = _load("kuberay/rayjob.yaml")
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    spec = job["spec"]
    assert job["metadata"]["name"] and "distcl train" in spec["entrypoint"]
    assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] > 0
    assert "MLFLOW_TRACKING_URI" in yaml.safe_load(spec["runtimeEnvYAML"])["env_vars"]
    cluster = spec["rayClusterSpec"]
    assert cluster["authOptions"]["mode"] == "token"
    _check_cluster_spec(cluster)


def test_raycluster_manifest_has_required_fields():
    rc = _load("kuberay/raycluster.yaml")
    assert rc["apiVersion"] == "ray.io/v1" and rc["kind"] == "RayCluster"
    assert rc["metadata"]["name"]
    _check_cluster_spec(rc["spec"])
    env = rc["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": "RAY_AUTH_MODE", "value": "token"} in env


def _check_cluster_spec(spec: dict) -> None:
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    ports = {p["containerPort"] for p in head["template"]["spec"]["containers"][0]["ports"]}
    assert {6379, 8265} <= ports
    groups = spec["workerGroupSpecs"]
    assert groups
    for g in groups:
        container = g["template"]["spec"]["containers"][0]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "8"
        assert g["maxReplicas"] >= g["minReplicas"] >= 0
        assert "/dev/shm" in {m["mountPath"] for m in container["volumeMounts"]}


def test_sbatch_passes_bash_n_and_shellcheck():
    subprocess.run(["bash", "-n", str(SBATCH)], check=True)
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck not installed (apt-get install shellcheck)")
    res = subprocess.run(["shellcheck", str(SBATCH)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout


def test_runtime_env_file_is_valid_for_ray_and_launch(capsys):
    from ray.runtime_env import RuntimeEnv

    RuntimeEnv(**_load("runtime_env.yaml"))  # raises on unknown or malformed fields
    assert launch.main(["--dry-run", "--runtime-env", str(CLUSTER / "runtime_env.yaml")]) == 0
    spec = json.loads(capsys.readouterr().out)
    assert spec["runtime_env"]["working_dir"] == "." and ".venv" in spec["runtime_env"]["excludes"]


def test_override_keys_in_cluster_files_are_config_keys():
    texts = [
        _load("kuberay/rayjob.yaml")["spec"]["entrypoint"],
        SBATCH.read_text().split("distcl train", 1)[1],
        *_readme_commands(),
    ]
    keys = {o.split("=", 1)[0] for t in texts for o in _overrides(t)}
    assert {"data.beton_dir", "train.storage_path", "train.num_workers"} <= keys
    assert keys <= CONFIG_KEYS, f"unknown config keys: {sorted(keys - CONFIG_KEYS)}"


def test_presets_named_in_cluster_files_exist():
    from distcl.config import preset_names

    text = README + SBATCH.read_text() + (CLUSTER / "kuberay" / "rayjob.yaml").read_text()
    named = set(re.findall(r"(?:--config |DISTCL_CONFIG:-|DISTCL_CONFIG=)([a-z0-9_]+)", text))
    assert "cifar10_simclr_resnet18" in named
    assert named <= set(preset_names()), f"missing presets: {sorted(named - set(preset_names()))}"


def test_readme_commands_match_the_files():
    for path in set(re.findall(r"\bcluster/[\w./-]*\w", README)):
        assert (REPO / path).exists(), f"README names a missing file: {path}"
    launches = [c.split("distcl launch", 1)[1] for c in _readme_commands() if "distcl launch" in c]
    assert len(launches) >= 8
    for rest in launches:
        launch.build_parser().parse_intermixed_args(shlex.split(rest))  # SystemExit if unknown
    rc, job = _load("kuberay/raycluster.yaml"), _load("kuberay/rayjob.yaml")
    assert f"svc/{rc['metadata']['name']}-head-svc" in README
    assert f"rayjob {job['metadata']['name']}" in README
    secret = rc["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["env"][1]
    assert f"secret generic {secret['valueFrom']['secretKeyRef']['name']}" in README
    image = rc["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["image"]
    assert f"-t {image} ." in README and f"docker push {image}" in README


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("http://head:8265", "http://head:8265"),
        ("head", "http://head:8265"),
        ("https://ray.example.com/", "https://ray.example.com:8265"),
        ("127.0.0.1:9000", "http://127.0.0.1:9000"),
    ],
)
def test_address_resolution(given, expected):
    assert launch.resolve_address(given) == expected


@pytest.mark.parametrize("bad", ["127.0.0.1:6379", "ray://head:10001", "ftp://head:8265", ""])
def test_bad_addresses_name_the_dashboard_port(bad, monkeypatch):
    for name in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(launch.LaunchError, match="http://HEAD:8265"):
        launch.resolve_address(bad)


def test_arguments_become_a_quoted_train_command_and_runtime_env(capsys, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    argv = [
        "train.epochs=2",
        "--dry-run",
        "--config",
        "my preset.yaml",
        "--resume",
        "data.root=/data/a b",
        "--env",
        "EXTRA=1",
    ]
    assert launch.main(argv) == 0
    spec = json.loads(capsys.readouterr().out)
    assert shlex.split(spec["entrypoint"]) == [
        "distcl",
        "train",
        "--config",
        "my preset.yaml",
        "--resume",
        "train.epochs=2",
        "data.root=/data/a b",
    ]
    assert spec["runtime_env"] == {
        "env_vars": {
            "MLFLOW_TRACKING_URI": "http://mlflow:5000",
            "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
            "EXTRA": "1",
        }
    }


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--dry-run", "epochs"], "is not key.sub=value"),
        (
            ["--dry-run", "--env", "AWS_SECRET_ACCESS_KEY=x"],
            "refusing to put AWS_SECRET_ACCESS_KEY",
        ),
        (["--dry-run", "--env", "RAY_AUTH_TOKEN=x"], "refusing to put RAY_AUTH_TOKEN"),
        (["--dry-run", "--runtime-env", "/nonexistent.yaml"], "not readable YAML"),
    ],
)
def test_bad_arguments_fail_with_the_setting_and_the_fix(argv, message, capsys):
    assert launch.main(argv) == launch.EXIT_LAUNCH_ERROR
    assert message in capsys.readouterr().err


def test_usage_errors_return_2_and_status_and_stop_exclude_each_other(capsys):
    assert launch.main(["--status", "a", "--stop", "b"]) == 2
    assert "not allowed with" in capsys.readouterr().err
    assert launch.main(["--help"]) == 0


def test_unreachable_address_fails_fast_with_what_to_check(capsys, monkeypatch):
    monkeypatch.setenv("RAY_AUTH_TOKEN", "s3cr3t-token-value")
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
    port = sock.getsockname()[1]
    t0 = time.monotonic()
    try:
        rc = launch.main(["--address", f"http://127.0.0.1:{port}", "--config", "x"])
    finally:
        sock.close()
    assert time.monotonic() - t0 < 15
    err = capsys.readouterr().err
    assert rc == launch.EXIT_LAUNCH_ERROR and f"127.0.0.1:{port}" in err
    for hint in ("Connection refused", "8265", "dashboard", "ray[default]", "6379"):
        assert hint in err
    assert "s3cr3t" not in err


FAKE_SLURM = {  # stand-ins so the sbatch script runs on one machine
    "srun": '#!/bin/bash\nwhile [[ $# -gt 0 && $1 == -* ]]; do shift; done\nexec "$@"\n',
    "scontrol": '#!/bin/bash\n[[ "$1 $2" == "show hostnames" ]] && printf "node1\\nnode2\\n"\n',
    "distcl": '#!/bin/bash\necho "fake distcl: $* RAY_ADDRESS=$RAY_ADDRESS"\nexit 7\n',
}


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
def test_sbatch_starts_two_ray_nodes_runs_distcl_and_stops_them(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in FAKE_SLURM.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    job_id = f"distcltest{os.getpid()}"
    marker, shared = f"/tmp/ray_{job_id}", tmp_path / "shared"
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
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "RAY_AUTH"))}
    env.update(
        PATH=f"{bin_dir}:{Path(sys.executable).parent}:{env['PATH']}",
        SLURM_JOB_ID=job_id,
        SLURM_JOB_NODELIST="node[1-2]",
        SLURM_CPUS_PER_TASK="1",
        DISTCL_SHARED=str(shared),
        MLFLOW_TRACKING_URI="http://mlflow.invalid:5000",
        RAY_USAGE_STATS_ENABLED="0",
        RAY_PORT=str(p[0]),
        RAY_DASHBOARD_PORT=str(p[1]),
        DISTCL_JOIN_TIMEOUT_S="120",
        DISTCL_RAY_HEAD_ARGS=f"--ray-client-server-port={p[2]} " + node.format(*p[3:9]),
        DISTCL_RAY_WORKER_ARGS=node.format(*p[9:15]),
    )
    try:
        with open(tmp_path / "sbatch.log", "w") as out:  # a file, not a pipe: Ray may hold it
            rc = subprocess.run(
                ["bash", str(SBATCH), "train.epochs=1"],
                env=env,
                cwd=tmp_path,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=300,
            ).returncode
    finally:
        left = _kill_marked(marker)
        shutil.rmtree(marker, ignore_errors=True)
    log = (tmp_path / "sbatch.log").read_text()
    assert rc == 7, log  # distcl train's exit code is the job's
    assert "2/2 Ray nodes alive" in log, log
    fake = re.search(r"fake distcl: (.*) RAY_ADDRESS=(\S+)", log)
    assert fake and fake.group(2).endswith(f":{p[0]}"), log
    assert fake.group(1).split() == [
        "train",
        "--config",
        "cifar10_simclr_resnet18",
        f"data.beton_dir={shared}/betons",
        f"train.storage_path={shared}/checkpoints",
        "train.num_workers=2",
        "train.cpus_per_worker=1",
        "train.use_gpu=false",
        "train.epochs=1",
    ]
    assert not (shared / f"slurm-{job_id}").exists(), "the job's token was left behind"
    assert not left, f"Ray processes left after the script ended: {left}"
