"""`distcl prepare`: Fashion-MNIST from idx files the test writes; reuse; bad files refused."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from distcl.data.beton import beton_path, prepare, read_meta
from distcl.data.sources import DataError, fashion_mnist


def test_prepare_writes_valid_beton_and_reuses_it(fmnist_root, tmp_path):
    path, meta, written = prepare(
        "fashion_mnist", "train", root=str(fmnist_root), out=str(tmp_path)
    )
    assert written and meta["count"] == 600 and meta["resolution"] == 28 and meta["channels"] == 1
    assert read_meta(path)["count"] == 600
    mtime = path.stat().st_mtime_ns
    _, _, written_again = prepare(
        "fashion_mnist", "train", root=str(fmnist_root), out=str(tmp_path)
    )
    assert not written_again and path.stat().st_mtime_ns == mtime


def test_beton_images_and_labels_match_source(fmnist_root, tmp_path):
    from distcl.evaluation.evaluate import raw_pixels

    path, _, _ = prepare("fashion_mnist", "test", root=str(fmnist_root), out=str(tmp_path))
    src = fashion_mnist("test", str(fmnist_root), cache=str(tmp_path / "raw"))
    x, y = raw_pixels(str(path), 1)
    assert np.array_equal(y.numpy(), src.labels)
    pixels = np.rint((x.numpy() + 1) * 127.5).astype(np.uint8).reshape(-1, 28, 28)
    assert np.array_equal(pixels, src.images[..., 0])


def test_missing_dataset_says_how_to_install(tmp_path):
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        prepare("fashion_mnist", "train", root=str(tmp_path / "nothing"), out=str(tmp_path))


def test_truncated_beton_is_refused_with_rebuild_command(fmnist_root, tmp_path):
    path, _, _ = prepare("fashion_mnist", "test", root=str(fmnist_root), out=str(tmp_path))
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)
    with pytest.raises(DataError) as err:
        read_meta(path)
    assert str(path) in str(err.value) and "distcl prepare --dataset fashion_mnist" in str(
        err.value
    )


def test_foreign_beton_without_sidecar_is_refused(fmnist_root, tmp_path):
    path, _, _ = prepare("fashion_mnist", "test", root=str(fmnist_root), out=str(tmp_path))
    path.with_name(path.name + ".json").unlink()
    with pytest.raises(DataError, match="not written by distcl prepare"):
        read_meta(path)


def test_mismatched_beton_is_rewritten_by_prepare(fmnist_root, tmp_path):
    path, _, _ = prepare("fashion_mnist", "test", root=str(fmnist_root), out=str(tmp_path))
    sidecar = path.with_name(path.name + ".json")
    meta = json.loads(sidecar.read_text())
    sidecar.write_text(json.dumps({**meta, "bytes": 1}))
    _, _, written = prepare("fashion_mnist", "test", root=str(fmnist_root), out=str(tmp_path))
    assert written and read_meta(path)["count"] == 200


def test_cli_prepare_reports_reuse(fmnist_root, tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "distcl.cli",
        "prepare",
        "--root",
        str(fmnist_root),
        "--out",
        str(tmp_path),
        "--split",
        "test",
    ]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    assert "(wrote)" in first.stdout
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert "valid, reused" in second.stdout
    assert beton_path(str(tmp_path), "fashion_mnist", "test").exists()
    bad = subprocess.run(
        cmd[:-4] + ["--root", str(tmp_path / "missing"), "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and "dataset-fashion-mnist" in bad.stderr
    assert not list((tmp_path / "o").glob("*.beton"))  # nothing half-written
