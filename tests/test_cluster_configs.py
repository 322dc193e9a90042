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
import re
import shlex
import socket
import subprocess
from pathlib import Path

import pytest
import yaml

from distcl.config.schema import Config
from distcl.launch import submit as launch

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
    from distcl.config.schema import preset_names

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
