"""`distcl launch` without a cluster: addresses, the entrypoint and runtime env it builds, and
the errors it gives before connecting."""

from __future__ import annotations

import json
import shlex
import socket
import time

import pytest

from distcl.launch import submit as launch


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
