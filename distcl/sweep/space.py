"""Search spaces for `distcl sweep`: the YAML format of tune/*.yaml, validated before Ray starts.

params:                        # sampled config keys (key.sub), one distribution each
  loss.temperature: {loguniform: [0.05, 1.0]}
  loss.name: {grid: [ntxent, logistic]}     # grid: every value, x num_samples
  train.global_batch: {choice: [256, 512]}  # choice: one value drawn per trial
search: random                 # random (Tune's basic variant generator) | optuna
num_samples: 4                 # random draws (x the grid's product)
metric: knn_acc                # per-epoch kNN monitor; ASHA compares it at each rung
mode: max
asha: {grace_period: 1, reduction_factor: 3, max_t: 6}   # omit for no early stopping
max_concurrent: 0              # 0 = as many as fit the Ray cluster's CPUs
overrides: {eval.knn_train_images: 5000}                   # fixed values for every trial
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from distcl.config.schema import ConfigError, build, flatten_yaml

KINDS = ("loguniform", "uniform", "choice", "grid", "randint")
SEARCHES = ("random", "grid", "optuna")
SPACE_KEYS = (
    "params",
    "search",
    "num_samples",
    "metric",
    "mode",
    "asha",
    "max_concurrent",
    "overrides",
    "seed",
)
# Keys that change which .beton files a trial reads: the driver prepares the data once.
DATA_KEYS = (
    "data.dataset",
    "data.root",
    "data.download",
    "data.beton_dir",
    "data.storage",
    "data.max_resolution",
    "data.jpeg_quality",
    "data.split",
    "data.max_images",
)
MAX_CHECKED_COMBOS = 256  # categorical combinations validated one by one before the sweep


@dataclass(frozen=True)
class Space:
    params: dict[str, dict[str, list]]  # key.sub -> {kind: values}
    search: str = "random"  # random | grid (same generator) | optuna
    num_samples: int = 1  # Tune's num_samples: random draws, repeated over grid entries
    metric: str = "knn_acc"  # reported metric to rank trials and for ASHA
    mode: str = "max"  # max | min
    asha: dict[str, int] | None = None  # grace_period, reduction_factor, max_t (epochs)
    max_concurrent: int = 0  # 0 = derived from the cluster's CPUs
    overrides: dict[str, Any] = field(default_factory=dict)  # fixed key.sub values
    seed: int | None = None  # seeds the random draws (None: a fresh draw each sweep)

    def trial_count(self) -> int:
        grid = 1
        for spec in self.params.values():
            if "grid" in spec:
                grid *= len(spec["grid"])
        return grid * self.num_samples

    def describe(self) -> dict[str, Any]:
        """Flat MLflow params of the parent run."""
        out: dict[str, Any] = {
            "sweep.search": self.search,
            "sweep.num_samples": self.num_samples,
            "sweep.metric": self.metric,
            "sweep.mode": self.mode,
            "sweep.max_concurrent": self.max_concurrent,
            "sweep.trials": self.trial_count(),
            "sweep.seed": "none" if self.seed is None else self.seed,
        }
        for k, v in (self.asha or {}).items():
            out[f"sweep.asha.{k}"] = v
        for key, spec in self.params.items():
            kind, values = next(iter(spec.items()))
            out[f"space.{key}"] = f"{kind}{values}"
        return out

    def check_against(self, base: dict[str, Any]) -> None:
        """Build the config of every categorical combination (and each range's ends) over
        `base`, so a bad value (e.g. a label loss on unlabelled data) fails before Ray starts."""
        cats = {
            k: s.get("choice", s.get("grid"))
            for k, s in self.params.items()
            if "choice" in s or "grid" in s
        }
        ends = {k: next(iter(s.values())) for k, s in self.params.items() if k not in cats}
        combos = [dict(zip(cats, vals, strict=True)) for vals in itertools.product(*cats.values())]
        if len(combos) > MAX_CHECKED_COMBOS:  # too many: check each value on its own
            combos = [{k: v} for k, vals in cats.items() for v in vals]
        for combo in combos:
            for end in (0, 1):
                values = {**base, **combo, **{k: v[end] for k, v in ends.items()}}
                try:
                    build(values)
                except ConfigError as exc:
                    shown = {**combo, **{k: v[end] for k, v in ends.items()}}
                    raise ConfigError(
                        f"search space value(s) {shown} give an invalid trial "
                        f"config; remove them from params. {exc}"
                    ) from None


def _check_param(key: str, spec: Any) -> dict[str, list]:
    if key in DATA_KEYS:
        raise ConfigError(
            f"params.{key} cannot be swept: the data is prepared once per sweep; "
            "run one sweep per dataset, or move it to overrides"
        )
    if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in KINDS:
        raise ConfigError(
            f"params.{key}={spec!r} must be one distribution: "
            f"{{loguniform: [lo, hi]}}, {{choice: [a, b]}}, ... (one of {KINDS})"
        )
    kind, values = next(iter(spec.items()))
    if not isinstance(values, list) or not values:
        raise ConfigError(f"params.{key}.{kind} must be a non-empty list, got {values!r}")
    if kind in ("loguniform", "uniform", "randint"):
        if (
            len(values) != 2
            or not all(isinstance(v, int | float) for v in values)
            or not values[0] < values[1]
        ):
            raise ConfigError(
                f"params.{key}.{kind} must be [lo, hi] numbers with lo < hi, got {values!r}"
            )
        if kind == "loguniform" and values[0] <= 0:
            raise ConfigError(f"params.{key}.loguniform needs lo > 0, got {values[0]}")
    return {kind: values}


def _check_search(path: str | Path, search: str, params: dict[str, dict]) -> str:
    if search not in SEARCHES:
        raise ConfigError(f"space {path}: search={search!r} is not one of {SEARCHES}")
    if search == "optuna" and any("grid" in s for s in params.values()):
        raise ConfigError(f"space {path}: search=optuna cannot take grid params; use choice")
    if search == "grid" and any("grid" not in s for s in params.values()):
        raise ConfigError(f"space {path}: search=grid needs every param as {{grid: [...]}}")
    return search


def _check_asha(path: str | Path, asha: dict | None) -> dict | None:
    """The ASHA settings with their defaults filled in (None: no early stopping)."""
    if asha is None:
        return None
    asha = {"grace_period": 1, "reduction_factor": 3, **asha}
    if set(asha) != {"grace_period", "reduction_factor", "max_t"}:
        raise ConfigError(
            f"space {path}: asha needs max_t (epochs per trial) and takes "
            f"grace_period, reduction_factor; got {sorted(asha)}"
        )
    if not 1 <= asha["grace_period"] <= asha["max_t"] or asha["reduction_factor"] < 2:
        raise ConfigError(
            f"space {path}: asha needs 1 <= grace_period <= max_t and "
            f"reduction_factor >= 2, got {asha}"
        )
    return asha


def load_space(path: str | Path, text: str | None = None) -> Space:
    """Parse and check a space YAML (or `text`, the copy a resumed sweep stored)."""
    if text is None:
        if not Path(path).is_file():
            raise ConfigError(f"--space {path} does not exist; see tune/README.md for the spaces")
        text = Path(path).read_text()
    doc = yaml.safe_load(text) or {}
    unknown = set(doc) - set(SPACE_KEYS)
    if unknown:
        raise ConfigError(f"space {path}: unknown key(s) {sorted(unknown)}; see tune/README.md")
    params = {k: _check_param(k, v) for k, v in (doc.get("params") or {}).items()}
    if not params:
        raise ConfigError(
            f"space {path}: params is empty; add e.g. loss.temperature: {{loguniform: [0.05, 1.0]}}"
        )
    search = _check_search(path, doc.get("search", "random"), params)
    mode = doc.get("mode", "max")
    if mode not in ("max", "min"):
        raise ConfigError(f"space {path}: mode={mode!r} must be max or min")
    asha = _check_asha(path, doc.get("asha"))
    overrides = flatten_yaml(doc.get("overrides") or {})
    clash = set(overrides) & set(params)
    if clash:
        raise ConfigError(f"space {path}: {sorted(clash)} are both swept and fixed in overrides")
    num_samples = int(doc.get("num_samples", 1))
    if num_samples < 1:
        raise ConfigError(f"space {path}: num_samples must be >= 1, got {num_samples}")
    seed = doc.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise ConfigError(f"space {path}: seed must be an integer >= 0, got {seed!r}")
    return Space(
        params,
        search,
        num_samples,
        doc.get("metric", "knn_acc"),
        mode,
        asha,
        int(doc.get("max_concurrent", 0)),
        overrides,
        seed,
    )


def param_space(space: Space) -> dict[str, Any]:
    """Tune's param_space: flat `key.sub` -> Tune domain (grid entries as grid_search)."""
    from ray import tune

    make = {
        "loguniform": lambda v: tune.loguniform(*v),
        "uniform": lambda v: tune.uniform(*v),
        "randint": lambda v: tune.randint(*v),
        "choice": tune.choice,
        "grid": tune.grid_search,
    }
    return {k: make[kind](vals) for k, s in space.params.items() for kind, vals in s.items()}
