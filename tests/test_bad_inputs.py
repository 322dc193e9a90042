"""Bad input: each gets a non-zero exit and a message naming the problem, before Ray starts,
and leaves no file behind."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from distcl import cli


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


def _truncate(betons: Path) -> None:
    path = betons / "fashion_mnist-train.beton"
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 3)


def _drop_sidecar(betons: Path) -> None:
    (betons / "fashion_mnist-train.beton.json").unlink()


def _foreign(betons: Path) -> None:
    """A valid .beton (with its sidecar) of another split, under the train file's name."""
    for suffix in ("", ".json"):
        shutil.copy(
            betons / f"fashion_mnist-test.beton{suffix}",
            betons / f"fashion_mnist-train.beton{suffix}",
        )


CASES = [
    (["loss.temperature=-0.1"], "loss.temperature must be > 0, got -0.1 (try 0.1 to 0.5)"),
    (["loss.temperature=0"], "loss.temperature must be > 0"),
    (["train.global_batch=0"], "train.global_batch must be > 0"),
    (["train.global_batch=-8"], "train.global_batch must be > 0"),
    (["optim.lr=0"], "optim.lr must be > 0"),
    (["optim.lr=-0.5"], "optim.lr must be > 0"),
    (["train.global_batch=101"], "train.global_batch=101 does not divide by train.num_workers=2"),
    (["train.chunk_size=48"], "not divisible by train.num_workers=2 x train.chunk_size=48"),
    (["loss.name=infonce9"], "loss.name='infonce9' is not one of: ntxent"),
    (["method.name=simsiam"], "method.name='simsiam' is not one of"),
    (["data.dataset=imagenet22k"], "data.dataset='imagenet22k' is not one of"),
    (["data.dataset=stl10", "data.split=unlabeled", "loss.name=supcon"], "needs class labels"),
    (["train.epoch=3"], "Did you mean 'train.epochs'?"),
    (["optim.weight_decy=0.1"], "Did you mean 'optim.weight_decay'?"),
    (["train.epochs=three"], "train.epochs must be a int, got 'three'"),
    (["train.epochs"], "must look like key.sub=value"),
    (["data.views=1"], "data.views must be >= 2"),
    (["optim.momentum=1.5"], "optim.momentum must be in [0, 1)"),
    (["data.crop_scale_min=0"], "data.crop_scale_min must be in (0, 1]"),
    (["train.placement_strategy=ANYWHERE"], "train.placement_strategy='ANYWHERE' is not one of"),
    (["train.num_workers=64"], "needs 64 CPUs, but this machine has"),
    (["train.use_gpu=true", "train.num_workers=1"], "GPUs, but 0 are visible"),
    (["tracking.uri=http://127.0.0.1:9"], "tracking server http://127.0.0.1:9 is unreachable"),
    (["tracking.uri=htp://127.0.0.1:5000"], "has the scheme 'htp', which MLflow cannot"),
    (
        ["train.storage_path=/proc/distcl-runs"],
        "train.storage_path=/proc/distcl-runs is not writable",
    ),
    (["data.resolution=64"], "data.resolution=64 is larger than the stored images (28 px"),
    (["method.name=byol", "train.chunk_size=64"], "train.chunk_size (gradient caching) works"),
    (["method.name=byol", "data.views=3"], "method.name=byol uses 2 views, got data.views=3"),
    (["method.name=moco_v2", "method.queue_size=64"], "method.queue_size=64 must be >= train"),
    (["--config", "no_such_preset"], "unknown preset 'no_such_preset'"),
    ("truncate", "fashion_mnist-train.beton is"),
    ("drop_sidecar", "not written by distcl prepare"),
    ("foreign", "fashion_mnist-train.beton holds fashion_mnist/test, expected fashion_mnist/train"),
    ("missing_dataset", "sudo apt-get install dataset-fashion-mnist"),
]


@pytest.mark.parametrize(("args", "fragment"), CASES, ids=[str(c[0]) for c in CASES])
def test_bad_input_fails_fast_with_clear_message(
    args, fragment, tiny_betons, fmnist_root, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    betons = tmp_path / "betons"
    shutil.copytree(tiny_betons, betons)
    root = fmnist_root
    if isinstance(args, str):
        if args == "missing_dataset":
            shutil.rmtree(betons)
            root = tmp_path / "no-dataset-here"
        else:
            {"truncate": _truncate, "drop_sidecar": _drop_sidecar, "foreign": _foreign}[args](
                betons
            )
        args = []
    before = _files(tmp_path)
    code = cli.main(["train", *args, f"data.beton_dir={betons}", f"data.root={root}"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert fragment in err
    assert _files(tmp_path) - before == set(), "a bad input left files behind"
    assert not (tmp_path / "mlflow.db").exists()


def test_overrides_after_an_option_are_overrides_too(capsys):
    """`distcl train a=1 --summary-json F b=2`: argparse alone would refuse `b=2`."""
    code = cli.main(["train", "loss.temperature=-1", "--summary-json", "s.json", "train.epochs=0"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "loss.temperature must be > 0" in err and "train.epochs must be > 0" in err
    with pytest.raises(SystemExit):
        cli.main(["train", "--summary-json", "s.json", "--bogus"])
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err
