"""Baselines a run is compared against, each an MLflow run tagged `role=baseline`.

- `raw_pixels`: kNN and linear probe on flattened pixels (the floor every encoder must beat).
- `random_init`: the same probes on a randomly initialised encoder of the same architecture,
  seeded like training, so it is exactly the starting point of the trained encoder.
- `supervised`: a `distcl train method.name=supervised` run of the same architecture and split
  (trained by the user; looked up here, never trained implicitly).
- `reference`: published numbers from `distcl/configs/references.yml`, one run per entry.

The first two cost a full feature pass and a probe, so they are computed once per dataset, split
and architecture and then reused: first from an existing FINISHED baseline run with the same tags
in the experiment, then from a JSON cache next to the `.beton`s (`BETON_DIR/baselines/`, keyed by
the `.beton` sidecars, the kNN k and `PROTOCOL`), so a fresh tracking store also skips the
compute. Delete the cache file, or bump `PROTOCOL` when the probe changes, to recompute.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch
import yaml

from distcl.config import names
from distcl.config.schema import Config
from distcl.data.beton import read_meta
from distcl.evaluation import evaluate
from distcl.evaluation.probe import frozen_metrics
from distcl.models.encoders import encoder_from_config
from distcl.runtime.precision import to_channels_last
from distcl.tracking import core as tracking

PROTOCOL = 2  # version of the probe protocol behind cached figures (2: preconditioned L-BFGS)
COMPUTED = ("raw_pixels", "random_init")


@dataclass(frozen=True)
class Baseline:
    kind: str  # raw_pixels | random_init | supervised | reference
    name: str  # column name in tables: the kind, or the reference's name
    metrics: dict[str, float]  # knn_acc, linear_acc, ... (a reference has just its one metric)
    run_id: str = ""  # the MLflow baseline run ("" without tracking)
    source: str = ""  # mlflow | disk cache | computed | the publication of a reference
    tags: dict[str, str] = field(default_factory=dict)


def arch_key(cfg: Config) -> str:
    """What 'the same architecture' means: arch plus the settings that change the network."""
    m = cfg.model
    if m.arch == "text_transformer":
        return f"text_transformer-w{m.width}-l{m.blocks}"
    if m.arch in names.SMALL_CNN_ARCHS:
        return f"{m.arch}-w{m.width}-b{m.blocks}-f{m.feat_dim or 8 * m.width}"
    return f"{m.arch}-{'cifar' if m.cifar_stem else 'imagenet'}-stem"


def split_tags(data: dict[str, Any]) -> dict[str, str]:
    """The probe's train and test splits, named by their `.beton` files (with -firstN)."""
    return {"split": Path(data["train_eval_path"]).stem, "test_split": Path(data["test_path"]).stem}


def _filter(tags: dict[str, str]) -> str:
    return " and ".join(f"tags.{k} = '{v}'" for k, v in tags.items())


def _lookup(uri: str, experiment: str, tags: dict[str, str], exclude: str = "") -> Any:
    """The newest FINISHED run of `experiment` carrying all `tags`, or None."""
    if not uri:
        return None
    runs = tracking.find_runs(
        uri, experiment, _filter(tags) + " and attributes.status = 'FINISHED'"
    )
    return next((r for r in runs if r.info.run_id != exclude), None)


def _cache_key(data: dict[str, Any], **extra: Any) -> dict[str, Any]:
    key: dict[str, Any] = {"protocol": PROTOCOL, **extra}
    for role in ("train_eval_path", "test_path"):
        meta = read_meta(Path(data[role]))
        key[role] = {k: meta.get(k) for k in ("dataset", "split", "count", "bytes")}
    return key


def _read_cache(path: Path, key: dict[str, Any]) -> dict[str, float] | None:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return doc["metrics"] if doc.get("key") == key else None


def _write_cache(path: Path, key: dict[str, Any], metrics: dict[str, float]) -> None:
    """Atomic write, so two runs finishing together never leave a torn file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps({"key": key, "metrics": metrics}, indent=1))
    os.replace(tmp, path)


def ensure(
    kind: str,
    tags: dict[str, str],
    data: dict[str, Any],
    key: dict[str, Any],
    compute,
    uri: str,
    experiment: str,
) -> Baseline:
    """Reuse the baseline run, else the disk cache, else compute; log a run when tracking."""
    tags = {"role": "baseline", "baseline": kind, **tags}
    run = _lookup(uri, experiment, tags)
    if run is not None:
        metrics = {k: v for k, v in run.data.metrics.items() if not k.startswith("system/")}
        return Baseline(kind, kind, metrics, run.info.run_id, "mlflow", tags)
    cache = (
        Path(data["train_eval_path"]).parent
        / "baselines"
        / (f"{kind}-{tags.get('arch', 'pixels')}-{tags['split']}-{tags['test_split']}.json")
    )
    metrics, source = _read_cache(cache, key), "disk cache"
    if metrics is None:
        metrics, source = compute(), "computed"
        _write_cache(cache, key, metrics)
    run_id = ""
    if uri:
        logger = tracking.start_run(
            uri,
            experiment,
            f"baseline-{kind}",
            {"cache": str(cache)},
            {**tags, "source": source},
            system_metrics=False,
        )
        logger.log_metrics(metrics, step=0)
        logger.end("FINISHED")
        run_id = logger.run_id
    return Baseline(kind, kind, metrics, run_id, source, tags)


def raw_pixels(cfg: Config, data: dict[str, Any], uri: str, experiment: str) -> Baseline:
    def compute() -> dict[str, float]:
        channels = data["meta"]["channels"]
        px, py = evaluate.raw_pixels(data["train_eval_path"], channels)  # N x C*H*W
        qx, qy = evaluate.raw_pixels(data["test_path"], channels)
        return frozen_metrics(px, py, qx, qy, cfg.eval.knn_k)

    tags = {"dataset": cfg.data.dataset, **split_tags(data)}
    return ensure(
        "raw_pixels", tags, data, _cache_key(data, knn_k=cfg.eval.knn_k), compute, uri, experiment
    )


def random_init(cfg: Config, data: dict[str, Any], uri: str, experiment: str) -> Baseline:
    def compute() -> dict[str, float]:
        meta, m = data["meta"], cfg.model
        torch.manual_seed(cfg.train.seed)  # train.py seeds the same way before building
        encoder = to_channels_last(
            encoder_from_config(m, meta["channels"]), cfg.train.channels_last
        )
        features = evaluate.frozen_features(cfg, encoder, data, meta["channels"])
        return frozen_metrics(*features, cfg.eval.knn_k)

    tags = {
        "dataset": cfg.data.dataset,
        "arch": arch_key(cfg),
        "seed": str(cfg.train.seed),
        **split_tags(data),
    }
    key = _cache_key(data, knn_k=cfg.eval.knn_k, arch=arch_key(cfg), seed=cfg.train.seed)
    return ensure("random_init", tags, data, key, compute, uri, experiment)


def supervised(
    cfg: Config, data: dict[str, Any], uri: str, experiment: str, exclude_run: str = ""
) -> Baseline | None:
    """The newest finished supervised run of the same dataset, architecture and split."""
    tags = {
        "role": "baseline",
        "baseline": "supervised",
        "dataset": cfg.data.dataset,
        "arch": arch_key(cfg),
        **split_tags(data),
    }
    run = _lookup(uri, experiment, tags, exclude=exclude_run)
    if run is None:
        return None
    metrics = {
        k: v
        for k, v in run.data.metrics.items()
        if k in ("knn_acc", "linear_acc", "linear_top5", "semi_1pct_acc", "semi_10pct_acc")
    }
    return Baseline("supervised", "supervised", metrics, run.info.run_id, "mlflow", tags)


def references(dataset: str) -> list[dict[str, Any]]:
    """Published numbers for `dataset` from references.yml (name, metric, value, source, ...)."""
    text = (resources.files("distcl") / "configs" / "references.yml").read_text()
    return list((yaml.safe_load(text) or {}).get(dataset, []))


def reference_runs(dataset: str, uri: str, experiment: str) -> list[Baseline]:
    out = []
    for ref in references(dataset):
        tags = {
            "role": "baseline",
            "baseline": "reference",
            "reference": ref["name"],
            "dataset": dataset,
            "metric": ref["metric"],
        }
        metrics = {ref["metric"]: float(ref["value"])}
        run = _lookup(uri, experiment, tags)
        run_id = run.info.run_id if run is not None else ""
        if uri and (run is None or run.data.metrics.get(ref["metric"]) != metrics[ref["metric"]]):
            logger = tracking.start_run(
                uri,
                experiment,
                f"reference-{ref['name']}",
                {k: v for k, v in ref.items() if k != "value"},
                {**tags, "source": ref["source"]},
                system_metrics=False,
            )
            logger.log_metrics(metrics, step=0)
            logger.end("FINISHED")
            run_id = logger.run_id
        out.append(Baseline("reference", ref["name"], metrics, run_id, ref["source"], tags))
    return out


def all_baselines(
    cfg: Config, data: dict[str, Any], uri: str = "", experiment: str = "", exclude_run: str = ""
) -> list[Baseline]:
    """Raw pixels, random init, supervised (when one exists) and the published references.

    `uri` = "" works without tracking: the disk cache still spares the recompute.
    """
    found = [raw_pixels(cfg, data, uri, experiment), random_init(cfg, data, uri, experiment)]
    sup = supervised(cfg, data, uri, experiment, exclude_run) if uri else None
    return found + ([sup] if sup else []) + reference_runs(cfg.data.dataset, uri, experiment)
