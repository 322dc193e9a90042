"""Config: presets, overrides, validation errors, flat-dict round trip."""

from __future__ import annotations

import subprocess
import sys

import pytest

from distcl.config import schema as config
from distcl.config.schema import Config, ConfigError


def test_default_preset_loads_and_round_trips():
    cfg = config.load()
    assert cfg.data.dataset == "fashion_mnist"
    assert cfg.method.name == "simclr" and cfg.loss.name == "ntxent"
    flat = cfg.to_flat()
    assert flat["train.global_batch"] == cfg.train.global_batch
    assert config.from_flat(flat) == cfg


def test_overrides_are_typed():
    cfg = config.load(
        None,
        [
            "train.epochs=3",
            "loss.temperature=0.5",
            "train.use_gpu=false",
            "tracking.uri=sqlite:///x.db",
        ],
    )
    assert cfg.train.epochs == 3 and isinstance(cfg.train.epochs, int)
    assert cfg.loss.temperature == 0.5
    assert cfg.train.use_gpu is False
    assert cfg.tracking.uri == "sqlite:///x.db"


def test_config_is_frozen():
    cfg = Config()
    with pytest.raises(AttributeError):
        cfg.train.epochs = 5  # type: ignore[misc]


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("loss.temperature=-0.1", "loss.temperature must be > 0, got -0.1"),
        ("loss.temperature=0", "loss.temperature must be > 0"),
        ("train.global_batch=0", "train.global_batch must be > 0"),
        ("optim.lr=-1", "optim.lr must be > 0"),
        ("train.global_batch=513", "does not divide by train.num_workers=2; use 512 or 514"),
        ("loss.name=infonce2", "loss.name='infonce2' is not one of"),
        ("method.name=simsiam", "method.name='simsiam' is not one of"),
        ("data.dataset=mnist", "data.dataset='mnist' is not one of"),
        ("train.epochs=two", "train.epochs must be a int, got 'two'"),
        ("train.epochs=2.5", "train.epochs must be a int"),
        ("train.use_gpu=maybe", "train.use_gpu must be a bool"),
        ("data.views=1", "data.views must be >= 2"),
        ("optim.name=adam", "optim.name='adam' is not one of: adamw, sgd, lars"),
    ],
)
def test_bad_values_name_key_value_and_fix(override, fragment):
    with pytest.raises(ConfigError) as err:
        config.load(None, [override])
    assert fragment in str(err.value)


def test_chunk_divisibility_names_three_numbers():
    with pytest.raises(ConfigError) as err:
        config.load(None, ["train.global_batch=512", "train.num_workers=2", "train.chunk_size=96"])
    msg = str(err.value)
    assert "global_batch=512" in msg and "num_workers=2" in msg and "chunk_size=96" in msg


def test_unknown_key_suggests_nearest():
    with pytest.raises(ConfigError) as err:
        config.load(None, ["train.epoch=3"])
    assert "unknown config key 'train.epoch'" in str(err.value)
    assert "train.epochs" in str(err.value)


def test_malformed_override_and_unknown_preset():
    with pytest.raises(ConfigError, match="key.sub=value"):
        config.load(None, ["train.epochs"])
    with pytest.raises(ConfigError, match="presets: .*fashion_mnist_simclr"):
        config.load("no_such_preset")


def test_yaml_file_config(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epochs: 7\nloss:\n  temperature: 0.1\n")
    cfg = config.load(str(path), ["train.seed=3"])
    assert (cfg.train.epochs, cfg.loss.temperature, cfg.train.seed) == (7, 0.1, 3)
    assert config.load(str(path)).to_yaml().startswith("data:")


def test_every_shipped_preset_validates():
    for name in config.preset_names():
        config.load(name)


def test_config_package_loads_without_torch_or_models():
    """The CLI and the sweep planner validate a config without importing torch (names.py holds
    the names the registries in distcl.models and distcl.losses are checked against)."""
    code = (
        "import sys; from distcl.config import names, rules, schema, validate; "
        "schema.load(); print(sorted(m for m in sys.modules if m == 'torch' "
        "or (m.startswith('distcl.') and not m.startswith('distcl.config'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
