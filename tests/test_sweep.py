"""`distcl sweep` before Ray starts: search spaces that fail with the setting's name, the Optuna
dependency, and seeded draws that repeat. The sweeps themselves run in test_sweep_asha.py and
test_sweep_resume.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from distcl.config import schema as config
from distcl.sweep.space import load_space
from tests.sweeps import write_space


def test_space_errors_name_the_setting(tmp_path):
    bad = write_space(tmp_path / "a.yaml", params={"loss.temperature": {"loguniform": [0, 1]}})
    with pytest.raises(config.ConfigError, match="loguniform needs lo > 0"):
        load_space(bad)
    bad = write_space(tmp_path / "b.yaml", params={"data.dataset": {"choice": ["cifar10"]}})
    with pytest.raises(config.ConfigError, match="cannot be swept"):
        load_space(bad)
    space = load_space(
        write_space(tmp_path / "c.yaml", params={"loss.name": {"choice": ["ntxent", "supcon"]}})
    )
    unlabelled = {**config.load(None).to_flat(), "data.dataset": "stl10", "data.split": "unlabeled"}
    with pytest.raises(config.ConfigError, match="supcon.*needs class labels"):
        space.check_against(unlabelled)
    for path in sorted(Path("tune").glob("*.yaml")):  # the shipped spaces parse and validate
        load_space(path).check_against(config.load(None).to_flat())


def test_optuna_missing_is_a_clear_error(tmp_path):
    from distcl.sweep.run import _search_alg

    space = load_space(
        write_space(
            tmp_path / "o.yaml",
            search="optuna",
            params={"loss.temperature": {"loguniform": [0.05, 1.0]}},
        )
    )
    try:
        import optuna  # noqa: F401
    except ImportError:
        with pytest.raises(config.ConfigError, match="pip install 'distcl\\[optuna\\]'"):
            _search_alg(space)
    else:
        assert type(_search_alg(space)).__name__ == "OptunaSearch"


def _draws(space, n: int) -> list[dict]:
    """The first `n` trial configs the space's search algorithm generates (no Ray needed)."""
    from ray.tune.experiment import Experiment

    from distcl.sweep.run import _search_alg
    from distcl.sweep.space import param_space

    alg = _search_alg(space)  # no concurrency cap: every trial is generated at once
    alg.add_configurations(
        [Experiment("e", run=lambda _: None, config=param_space(space), num_samples=n)]
    )
    return [alg.next_trial().config for _ in range(n)]


def test_a_seeded_space_draws_the_same_trials_every_time(tmp_path):
    doc = {"params": {"loss.temperature": {"loguniform": [0.05, 1.0]}}, "num_samples": 4}
    seeded = load_space(write_space(tmp_path / "s.yaml", seed=0, **doc))
    assert seeded.seed == 0 and seeded.describe()["sweep.seed"] == 0
    first = _draws(seeded, 4)
    assert _draws(seeded, 4) == first
    temps = [c["loss.temperature"] for c in first]
    assert len(set(temps)) == 4 and all(0.05 <= t <= 1.0 for t in temps)
    assert _draws(load_space(write_space(tmp_path / "t.yaml", seed=1, **doc)), 4) != first
    unseeded = load_space(write_space(tmp_path / "u.yaml", **doc))
    assert _draws(unseeded, 4) != _draws(unseeded, 4)  # fresh draws each sweep
    with pytest.raises(config.ConfigError, match="seed must be an integer >= 0"):
        load_space(write_space(tmp_path / "v.yaml", seed=-1, **doc))
    assert load_space("tune/fmnist_default.yaml").seed == 0  # the README's sweep reruns
