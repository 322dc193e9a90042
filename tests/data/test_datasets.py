"""`distcl prepare` for CIFAR-10/100, STL-10 and ImageFolder, from files in their native formats.

Each test writes tiny files in the dataset's own layout (tests/data/native_fixtures.py), runs
the real prepare path, and decodes the `.beton` back to compare images and labels.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from distcl.cli import main as cli_main
from distcl.config import schema as config
from distcl.data.beton import prepare, read_meta
from distcl.data.sources import DataError

from .native_fixtures import (
    make_cifar10,
    make_cifar100,
    make_imagefolder,
    make_stl10,
    read_beton,
)


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    """One folder holding CIFAR-10, CIFAR-100 and STL-10 files; returns (root, sources)."""
    root = tmp_path_factory.mktemp("native-raw")
    return root, {
        "cifar10": make_cifar10(root),
        "cifar100": make_cifar100(root),
        "stl10": make_stl10(root),
    }


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("imagefolder")
    return root, make_imagefolder(root)


@pytest.mark.parametrize(
    ("dataset", "split"),
    [("cifar10", "train"), ("cifar10", "test"), ("cifar100", "train"), ("stl10", "test")],
)
def test_raw_beton_holds_the_source_images_and_labels(raw, tmp_path, dataset, split):
    root, sources = raw
    path, meta, written = prepare(dataset, split, root=str(root), out=str(tmp_path))
    x, y = sources[dataset][split]
    stored, labels = read_beton(path)
    assert written and meta["count"] == len(x) and meta["channels"] == 3
    assert meta["resolution"] == x.shape[1] and meta["uniform"]
    assert meta["num_classes"] == (100 if dataset == "cifar100" else 10)
    assert np.array_equal(np.stack(stored), x)  # exact: no transposition, no channel swap
    assert np.array_equal(labels, y)


def test_stl10_unlabeled_splits(raw, tmp_path):
    root, sources = raw
    path, meta, _ = prepare("stl10", "unlabeled", root=str(root), out=str(tmp_path))
    stored, labels = read_beton(path)
    assert np.array_equal(np.stack(stored), sources["stl10"]["unlabeled"][0])
    assert (labels == -1).all() and meta["num_classes"] == 10
    path, meta, _ = prepare("stl10", "train+unlabeled", root=str(root), out=str(tmp_path))
    stored, labels = read_beton(path)
    (xt, yt), (xu, _) = sources["stl10"]["train"], sources["stl10"]["unlabeled"]
    assert np.array_equal(np.stack(stored), np.concatenate([xt, xu]))
    assert np.array_equal(labels, np.concatenate([yt, np.full(len(xu), -1)]))


def test_jpeg_storage_is_close_and_recorded(raw, tmp_path):
    root, sources = raw
    path, meta, _ = prepare(
        "cifar10", "test", root=str(root), out=str(tmp_path), write_mode="jpeg", jpeg_quality=95
    )
    assert (meta["write_mode"], meta["jpeg_quality"]) == ("jpg", 95)
    stored, labels = read_beton(path)
    x, y = sources["cifar10"]["test"]
    err = np.abs(np.stack(stored).astype(float) - x).mean()
    assert 0 < err < 4 and np.array_equal(labels, y)  # lossy, but the same images


def test_second_run_is_a_no_op_and_other_storage_is_rebuilt_or_refused(raw, tmp_path):
    root, _ = raw
    kw = {"root": str(root), "out": str(tmp_path)}
    path, _, written = prepare("cifar10", "test", **kw)
    mtime = path.stat().st_mtime_ns
    _, _, again = prepare("cifar10", "test", **kw)
    assert written and not again and path.stat().st_mtime_ns == mtime
    with pytest.raises(DataError, match="was written with write_mode=raw") as err:
        prepare("cifar10", "test", rebuild_invalid=False, write_mode="jpg", **kw)  # distcl train
    assert "data.storage=raw" in str(err.value) and "--write-mode jpg" in str(err.value)
    _, meta, rebuilt = prepare("cifar10", "test", write_mode="jpg", **kw)  # distcl prepare
    assert rebuilt and read_meta(path)["write_mode"] == meta["write_mode"] == "jpg"


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100", "stl10"])
def test_missing_folder_says_where_and_that_download_is_opt_in(tmp_path, dataset):
    with pytest.raises(DataError) as err:
        prepare(dataset, "train", root=str(tmp_path / "none"), out=str(tmp_path / "out"))
    msg = str(err.value)
    folder = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}.get(
        dataset, "stl10_binary"
    )
    assert str(tmp_path / "none" / folder) in msg
    assert "--download" in msg and "data.download=true" in msg and "only when asked" in msg
    assert not list((tmp_path / "out").glob("*.beton"))


def test_missing_file_in_cifar_folder_is_named(raw, tmp_path):
    root, _ = raw
    partial = tmp_path / "partial" / "cifar-10-batches-py"
    partial.mkdir(parents=True)
    (partial / "data_batch_1").write_bytes(
        (root / "cifar-10-batches-py" / "data_batch_1").read_bytes()
    )
    with pytest.raises(DataError, match="data_batch_2 is missing"):
        prepare("cifar10", "train", root=str(partial.parent), out=str(tmp_path))


def test_imagefolder_classes_sorted_images_exact_sizes_mixed(tree, tmp_path):
    root, files = tree
    path, meta, _ = prepare("imagefolder", "train", root=str(root), out=str(tmp_path))
    stored, labels = read_beton(path)
    assert meta["num_classes"] == 3 and meta["count"] == 12  # 3 PNG + 1 JPEG per class
    assert not meta["uniform"] and (meta["min_side"], meta["max_side"]) == (30, 64)
    assert labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4  # ant, moth, zebra
    by_label = {}
    for image, label in zip(stored, labels, strict=True):
        by_label.setdefault(int(label), []).append(image)
    for png_path, img, label in files["train"]:  # sorted names: 00.png, 01.png, 02.png, x.JPG
        assert np.array_equal(by_label[label][int(png_path.stem)], img)
    path, meta, _ = prepare("imagefolder", "test", root=str(root), out=str(tmp_path))
    stored, labels = read_beton(path)  # no test/ folder: val/ is read
    assert labels.tolist() == [0, 1, 2] and meta["uniform"] and meta["resolution"] == 36
    expect = {label: img for _, img, label in files["val"]}
    assert all(np.array_equal(s, expect[int(y)]) for s, y in zip(stored, labels, strict=True))


def test_imagefolder_max_resolution_and_other_tree_refused(tree, tmp_path):
    root, _ = tree
    kw = {"root": str(root), "out": str(tmp_path), "max_resolution": 32}
    path, meta, _ = prepare("imagefolder", "train", **kw)
    assert meta["max_side"] == 32 and meta["max_resolution"] == 32
    assert max(max(im.shape[:2]) for im in read_beton(path)[0]) == 32
    with pytest.raises(DataError, match="was written from the ImageFolder tree"):
        prepare("imagefolder", "train", rebuild_invalid=False, **{**kw, "root": str(tmp_path)})
    with pytest.raises(DataError, match="needs the tree's location"):
        prepare("imagefolder", "train", out=str(tmp_path / "o"))


def test_cli_prepare_cifar(raw, tmp_path, capsys):
    root, _ = raw
    args = ["prepare", "--dataset", "cifar10", "--root", str(root), "--out", str(tmp_path)]
    assert cli_main([*args, "--split", "test", "--storage", "jpeg"]) == 0
    assert "(wrote)" in capsys.readouterr().out
    assert cli_main([*args, "--split", "test", "--storage", "jpeg"]) == 0
    assert "valid, reused" in capsys.readouterr().out
    assert cli_main([*args[:-4], "--root", str(tmp_path / "no"), "--out", str(tmp_path)]) == 2
    assert "--download" in capsys.readouterr().err


def test_config_names_datasets_splits_loaders_and_storage():
    with pytest.raises(config.ConfigError, match="not one of: fashion_mnist, cifar10, cifar100"):
        config.load(None, ["data.dataset=cifar11"])
    with pytest.raises(config.ConfigError, match="data.split='unlabeled' is not one of: train"):
        config.load(None, ["data.dataset=cifar10", "data.split=unlabeled"])
    with pytest.raises(config.ConfigError, match="method.name=supervised needs class labels"):
        config.load(
            None, ["data.dataset=stl10", "data.split=train+unlabeled", "method.name=supervised"]
        )
    with pytest.raises(config.ConfigError, match="data.storage='png' is not one of"):
        config.load(None, ["data.storage=png"])
    cfg = config.load(
        "cifar10_simclr_resnet18",
        ["data.loader=torchvision", "data.storage=jpeg", "train.use_gpu=false"],
    )
    assert (cfg.data.dataset, cfg.data.loader, cfg.data.storage) == (
        "cifar10",
        "torchvision",
        "jpeg",
    )
    assert config.load(None, ["data.dataset=imagefolder", "data.split=val"]).data.split == "val"


def test_eval_loader_centre_crops_mixed_sizes(tree, tmp_path):
    from distcl.data.loader import eval_loader

    root, _ = tree
    path, meta, _ = prepare("imagefolder", "train", root=str(root), out=str(tmp_path))
    batches = list(eval_loader(path, batch_size=5, num_workers=1))
    side = meta["resolution"]  # median shorter side: SimpleRGBImageDecoder cannot mix sizes
    assert [tuple(b[0].shape) for b in batches] == [(5, 3, side, side)] * 2 + [(2, 3, side, side)]
    assert torch.cat([b[1] for b in batches]).tolist() == [0] * 4 + [1] * 4 + [2] * 4


def test_train_prepares_stl10_pretraining_and_labelled_eval_splits(raw, tmp_path):
    from distcl.data.prepare import prepare_data

    root, _ = raw
    overrides = [
        "data.dataset=stl10",
        "data.split=train+unlabeled",
        "data.resolution=64",
        "data.storage=jpeg",
        f"data.root={root}",
        f"data.beton_dir={tmp_path}",
    ]
    data = prepare_data(config.load(None, overrides))
    assert data["train_path"].endswith("stl10-train+unlabeled.beton")
    assert data["train_eval_path"].endswith("stl10-train.beton")  # labelled: kNN bank, probe
    assert data["meta"] == {"channels": 3, "num_classes": 10, "resolution": 96, "count": 17}
    assert read_meta(tmp_path / "stl10-test.beton")["write_mode"] == "jpg"
    with pytest.raises(DataError, match="was written with write_mode=jpg"):
        prepare_data(config.load(None, overrides[:3] + overrides[4:]))  # train never overwrites


def test_download_runs_only_when_asked(tmp_path, monkeypatch):
    """No network here: torchvision's downloader is replaced by one that writes the files."""
    import torchvision.datasets

    calls = []

    def fake_cifar10(root, train, download):
        calls.append((root, download))
        make_cifar10(tmp_path / "dl")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", fake_cifar10)
    kw = {"root": str(tmp_path / "dl"), "out": str(tmp_path / "out")}
    with pytest.raises(DataError, match="only when asked"):
        prepare("cifar10", "test", **kw)
    assert calls == []
    _, meta, written = prepare("cifar10", "test", download=True, **kw)
    assert calls == [(str(tmp_path / "dl"), True)] and written and meta["count"] == 12
