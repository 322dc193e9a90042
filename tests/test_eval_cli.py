"""`distcl eval` on a checkpoint (no Ray): figures logged into the run, input adaptation for
transfer, and errors that name the fix. `--run` against the server is in test_tracking.py."""

from __future__ import annotations

import pytest
import torch

from distcl.cli import main as cli_main
from distcl.config import schema as config
from distcl.evaluation import cli as eval_cli
from distcl.evaluation.evaluate import extract_features, frozen_feature_kwargs
from distcl.evaluation.final import load_encoder
from distcl.evaluation.probe import frozen_metrics
from distcl.models.methods import build_method
from distcl.runtime import checkpoint
from distcl.tracking import core as tracking


@pytest.fixture()
def ckpt(tiny_betons, tmp_path):
    """A checkpoint of an untrained method (as train.py writes it) and its SQLite run."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cfg = config.load(
        None,
        [
            f"data.beton_dir={tiny_betons}",
            "model.width=4",
            "model.feat_dim=0",  # 8 x width: the tiny net
            "model.proj_hidden=16",
            "model.proj_dim=8",
            "train.epochs=3",
            f"tracking.uri={uri}",
            "eval.knn_k=5",
        ],
    )
    logger = tracking.start_run(
        uri,
        "distcl-fashion_mnist",
        cfg.run_name,
        cfg.to_flat(),
        {"role": "method"},
        system_metrics=False,
    )
    torch.manual_seed(0)
    state = {
        "model": build_method(cfg, 1, 10).state_dict(),
        "config": cfg.to_flat(),
        "meta": {"channels": 1, "num_classes": 10, "resolution": 28, "count": 600},
        "mlflow_run_id": logger.run_id,
    }
    checkpoint.save(tmp_path / "ckpt", state)
    return cfg, state, logger, tmp_path / "ckpt"


def test_eval_checkpoint_logs_knn_and_linear_into_its_run(ckpt, tiny_betons, capsys):
    cfg, state, logger, path = ckpt
    assert cli_main(["eval", "--checkpoint", str(path), "--what", "knn,linear"]) == 0
    assert "linear_acc" in capsys.readouterr().out
    enc = load_encoder(cfg, state, state["meta"])
    kw = frozen_feature_kwargs(cfg.train.precision, 1)  # as the run's final evaluation does
    tr = extract_features(enc, str(tiny_betons / "fashion_mnist-train.beton"), **kw)
    te = extract_features(enc, str(tiny_betons / "fashion_mnist-test.beton"), **kw)
    expected = frozen_metrics(*tr, *te, knn_k=5)
    run = tracking.get_run(cfg.tracking.uri, logger.run_id)
    assert run.data.metrics["knn_acc"] == expected["knn_acc"]
    assert run.data.metrics["linear_acc"] == expected["linear_acc"]
    history = logger.client.get_metric_history(logger.run_id, "linear_acc")
    assert [m.step for m in history] == [cfg.train.epochs]


def test_input_adapter_converts_channels_and_side():
    torch.manual_seed(0)
    grey = torch.nn.Sequential(
        torch.nn.Conv2d(1, 3, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()
    )
    rgb32 = torch.rand(2, 3, 32, 32)
    out = eval_cli.InputAdapter(grey, 1, 28)(rgb32)
    small = torch.nn.functional.interpolate(
        rgb32.mean(1, keepdim=True),
        size=(28, 28),
        mode="bilinear",
        antialias=True,
        align_corners=False,
    )
    torch.testing.assert_close(out, grey(small))
    assert eval_cli.in_channels(grey) == 1
    colour = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3), torch.nn.Flatten())
    grey_as_rgb = torch.rand(2, 1, 28, 28).expand(-1, 3, -1, -1)  # how grey betons are stored
    torch.testing.assert_close(
        eval_cli.InputAdapter(colour, 3, 28)(grey_as_rgb), colour(grey_as_rgb)
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--run", "x", "--what", "knn,probe"], "--what 'knn,probe': choose from knn, linear"),
        (["--run", "x", "--what", "transfer"], "--what transfer needs --dataset B"),
        (["--what", "knn"], "needs --run RUN_ID or --checkpoint DIR"),
    ],
)
def test_bad_arguments_name_the_fix(argv, message, capsys):
    assert eval_cli.main(argv) == 2
    assert message in capsys.readouterr().err


def test_a_checkpoint_that_is_not_a_folder_is_a_clear_error(tmp_path, capsys):
    state = tmp_path / "state.pt"
    state.write_bytes(b"not a checkpoint folder")
    assert eval_cli.main(["--checkpoint", str(state), "--what", "knn"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("distcl eval: error: checkpoint ") and "Traceback" not in err


def test_unknown_run_names_the_store(tmp_path, capsys):
    assert eval_cli.main(["--run", "nope", "--tracking-uri", f"sqlite:///{tmp_path}/m.db"]) == 2
    assert "MLflow run nope not found in sqlite:///" in capsys.readouterr().err
