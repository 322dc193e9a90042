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
VENV_BIN = Path(sys.executable).parent
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


# Keys whose strings are shell command lines run one at a time (a RayJob's entrypoint, the
# launcher's *_commands lists), and keys whose values are pieces of one command line
# (`docker run` options, KubeRay's rayStartParams, appended to `ray start`).
COMMAND_KEYS = {
    "entrypoint",
    "initialization_commands",
    "setup_commands",
    "head_setup_commands",
    "worker_setup_commands",
    "head_start_ray_commands",
    "worker_start_ray_commands",
}
OPTION_KEYS = {"run_options", "rayStartParams"}


def _command_strings(node, where: str = ""):
    """(where, text, is_command) for each command string or option in a parsed YAML document."""
    if isinstance(node, dict):
        for key, value in node.items():
            here = f"{where}.{key}" if where else str(key)
            if key in COMMAND_KEYS | OPTION_KEYS:
                items = list(value.values()) if isinstance(value, dict) else value
                for i, text in enumerate(items if isinstance(items, list) else [items]):
                    yield f"{here}[{i}]", str(text), key in COMMAND_KEYS
            else:
                yield from _command_strings(value, here)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _command_strings(value, f"{where}[{i}]")


def _one_line_problems(text: str, is_command: bool) -> list[str]:
    """Why `text` would not run as the single command line it is meant to be ([] if it would).

    YAML's folded `>-` blocks join lines with spaces, but a blank or more-indented line inside
    keeps a newline, and the shell then runs what follows as a separate command. shlex.split
    treats that newline as a space, so it is checked for here explicitly.
    """
    problems = []
    if "\n" in text or "\r" in text:
        rest = re.split(r"[\r\n]", text, maxsplit=1)[1].strip()
        problems.append(f"has a newline; the shell would run {rest!r} as a command of its own")
    try:
        shlex.split(text)
    except ValueError as e:
        problems.append(f"shlex: {e}")
    if is_command:
        res = subprocess.run(["bash", "-n", "-c", text], capture_output=True, text=True)
        if res.returncode:
            problems.append(f"bash -n: {res.stderr.strip()}")
    return problems


def _entrypoint_problems(entrypoint: str) -> list[str]:
    """The RayJob entrypoint: one line, and every key.sub=value belongs to its `distcl train`."""
    problems = _one_line_problems(entrypoint, True)
    lexer = shlex.shlex(entrypoint, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands, current = [], []
    for word in lexer:
        if word in ("&&", "||", ";", "|", "&"):
            commands.append(current)
            current = []
        else:
            current.append(word)
    commands.append(current)
    train = [c for c in commands if c[:2] == ["distcl", "train"]]
    if len(train) != 1 or train[0] is not commands[-1]:
        problems.append(f"want one `distcl train` as the last command, got {commands}")
    stray = [w for c in commands if c[:2] != ["distcl", "train"] for w in c if _overrides(w)]
    if stray:
        problems.append(f"overrides outside `distcl train`: {stray}")
    return problems


def test_every_command_in_the_cluster_yamls_is_one_line_bash_parses():
    found, problems = [], []
    for path in sorted(CLUSTER.rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            for where, text, is_command in _command_strings(doc):
                found.append(f"{path.relative_to(CLUSTER)}:{where}")
                problems += [f"{found[-1]}: {p}" for p in _one_line_problems(text, is_command)]
    expected = {  # the walk found the commands it is meant to check
        "kuberay/rayjob.yaml:spec.entrypoint[0]",
        "kuberay/rayjob.yaml:spec.rayClusterSpec.headGroupSpec.rayStartParams[0]",
        "kuberay/raycluster.yaml:spec.headGroupSpec.rayStartParams[0]",
        *(f"{n}:{k}[1]" for n in LAUNCHERS for k in ("head_start_ray_commands", "setup_commands")),
        *(f"{n}:worker_start_ray_commands[1]" for n in LAUNCHERS),
        *(f"{n}:docker.run_options[0]" for n in LAUNCHERS),
    }
    assert expected <= set(found), sorted(expected - set(found))
    assert not problems, "\n".join(problems)
    job = _load("kuberay/rayjob.yaml")["spec"]["entrypoint"]
    assert not _entrypoint_problems(job), _entrypoint_problems(job)


def test_one_line_check_catches_a_blank_line_in_a_folded_entrypoint():
    # The entrypoint as it was before the fix: the blank line inside `>-` kept a newline, and
    # `train.storage_path=...` ran as a shell command of its own after a default-storage run.
    broken = yaml.safe_load(
        "entrypoint: >-\n"
        "  distcl prepare --out /mnt/b &&\n"
        "  distcl train --config c train.cpus_per_worker=8\n"
        " \n"
        "  train.storage_path=s3://bucket/checkpoints\n"
    )["entrypoint"]
    assert shlex.split(broken)[-1] == "train.storage_path=s3://bucket/checkpoints"  # looks fine
    problems = _entrypoint_problems(broken)
    assert len(problems) == 1 and "'train.storage_path=s3://bucket/checkpoints'" in problems[0]


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
    env.update(
        PATH=f"{bin_dir}:{Path(sys.executable).parent}:{env['PATH']}",
        SLURM_JOB_ID=job_id,
        SLURM_JOBID=job_id,
        SLURM_JOB_NAME="distcl",
        SLURM_JOB_NODELIST="node[1-2]",
        SLURM_NODELIST="node[1-2]",
        SLURM_JOB_NUM_NODES="2",
        SLURM_NNODES="2",
        SLURM_NODEID="0",
        SLURMD_NODENAME="node1",
        SLURM_NTASKS="2",
        SLURM_NTASKS_PER_NODE="1",
        SLURM_CPUS_PER_TASK="1",
        SLURM_CPUS_ON_NODE="1",
        SLURM_JOB_CPUS_PER_NODE="1(x2)",
        SLURM_SUBMIT_DIR=str(submit),
        SLURM_SUBMIT_HOST="login1",
        DISTCL_SHARED=str(tmp_path / "shared"),
        RAY_USAGE_STATS_ENABLED="0",
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
    from tests.test_launch import (
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
