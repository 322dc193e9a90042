"""Config validation: every check names the key, the bad value and what is allowed.

`problems(cfg)` checks each value on its own against names.py and its range, adds the rules
between keys from rules.py, and returns every problem; schema.build raises them as one
ConfigError whenever a Config is built. Nothing here imports torch. `preflight(cfg)` in distcl.job.preflight
checks the world (data files, storage, tracking server, CPUs) before Ray starts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from distcl.config import rules
from distcl.config.names import (
    ARCHS,
    DATASETS,
    DISTANCES,
    LOADERS,
    LOSSES,
    LR_SCALING,
    METHODS,
    MINING,
    OPTIMIZERS,
    PLACEMENTS,
    PRECISIONS,
    SPLITS,
    STORAGE,
    TRACKING_SCHEMES,
)

if TYPE_CHECKING:  # only for the annotations: schema.build imports this module
    from distcl.config.schema import Config


def tracking_uri_problem(uri: str, origin: str = "tracking.uri") -> str | None:
    """What is wrong with an MLflow tracking URI's scheme, or None. A bare path is fine (it
    becomes a SQLite file in that folder); `origin` names the setting in the message."""
    if not uri or ("://" not in uri and ":" not in uri.split("/")[0]):
        return None
    scheme = uri.split(":", 1)[0].split("+", 1)[0].lower()
    if scheme in TRACKING_SCHEMES:
        return None
    return (
        f"{origin}={uri.split('@')[-1]!r} has the scheme {scheme!r}, which MLflow cannot track to; "
        f"use one of {', '.join(s + '://' for s in TRACKING_SCHEMES)} "
        "(e.g. http://127.0.0.1:5000 for an mlflow server, sqlite:///mlflow.db for a local file)"
    )


def _choice(key: str, value: str, allowed: tuple[str, ...], errors: list[str]) -> None:
    if value not in allowed:
        errors.append(f"{key}={value!r} is not one of: {', '.join(allowed)}")


def _positive(key: str, value: float, errors: list[str], hint: str = "") -> None:
    if not value > 0:
        errors.append(f"{key} must be > 0, got {value}" + (f" ({hint})" if hint else ""))


def _data(cfg: Config, e: list[str]) -> None:
    d = cfg.data
    _choice("data.dataset", d.dataset, DATASETS, e)
    _choice("data.loader", d.loader, LOADERS, e)
    _positive("data.resolution", d.resolution, e, "try 28 for Fashion-MNIST, 32 for CIFAR")
    if d.views < 2:
        e.append(f"data.views must be >= 2 for contrastive learning, got {d.views}")
    if d.crop_scale_min is not None and not 0 < d.crop_scale_min <= 1:
        e.append(f"data.crop_scale_min must be in (0, 1], got {d.crop_scale_min} (SimCLR: 0.08)")
    if d.jitter_p is not None and not 0 <= d.jitter_p <= 1:
        e.append(f"data.jitter_p must be a probability in [0, 1], got {d.jitter_p}")
    if d.jitter is not None and d.jitter < 0:
        e.append(f"data.jitter must be >= 0, got {d.jitter}")
    if d.loader_workers < 0 or d.max_images < 0 or d.max_resolution < 0:
        e.append("data.loader_workers, data.max_images and data.max_resolution must be >= 0")
    if d.dataset in SPLITS:
        _choice("data.split", d.split, SPLITS[d.dataset], e)
    elif not d.split or "/" in d.split:
        e.append(f"data.split={d.split!r} must name a sub-folder of data.root (e.g. train)")
    _choice("data.storage", d.storage, STORAGE, e)
    if not 1 <= d.jpeg_quality <= 100:
        e.append(f"data.jpeg_quality must be in 1..100, got {d.jpeg_quality} (FFCV default 90)")


def _model_and_loss(cfg: Config, e: list[str]) -> None:
    m, lo = cfg.model, cfg.loss
    _choice("model.arch", m.arch, ARCHS, e)
    for key in ("width", "proj_hidden", "proj_dim"):
        _positive(f"model.{key}", getattr(m, key), e)
    if m.blocks < 0 or m.feat_dim < 0:
        e.append(
            f"model.blocks={m.blocks} and model.feat_dim={m.feat_dim} must be >= 0 "
            "(feat_dim=0 means 8 x model.width)"
        )
    _choice("method.name", cfg.method.name, METHODS, e)
    _choice("loss.name", lo.name, LOSSES, e)
    _positive("loss.temperature", lo.temperature, e, "try 0.1 to 0.5")
    _choice("loss.distance", lo.distance, DISTANCES, e)
    _choice("loss.mining", lo.mining, MINING, e)
    if lo.margin < 0 or lo.neg_margin < 0 or lo.pos_margin < 0 or lo.l2_reg < 0:
        e.append("loss.margin, loss.pos_margin, loss.neg_margin and loss.l2_reg must be >= 0")


def _optim_and_train(cfg: Config, e: list[str]) -> None:
    o, t = cfg.optim, cfg.train
    _choice("optim.name", o.name, OPTIMIZERS, e)
    _choice("optim.lr_scaling", o.lr_scaling, LR_SCALING, e)
    _positive("optim.lr", o.lr, e, "try 1e-3 for adamw, 0.3 for lars with linear scaling")
    if o.weight_decay < 0 or o.warmup_epochs < 0 or o.final_lr < 0:
        e.append("optim.weight_decay, optim.warmup_epochs and optim.final_lr must be >= 0")
    if not 0 <= o.momentum < 1:
        e.append(f"optim.momentum must be in [0, 1), got {o.momentum}")
    _positive("train.epochs", t.epochs, e)
    _positive("train.global_batch", t.global_batch, e, "try 256 to 4096")
    _positive("train.num_workers", t.num_workers, e)
    _positive("train.cpus_per_worker", t.cpus_per_worker, e)
    _choice("train.placement_strategy", t.placement_strategy, PLACEMENTS, e)
    _choice("train.precision", t.precision, PRECISIONS, e)
    for key in ("chunk_size", "max_failures", "skip_nonfinite", "log_every"):
        if getattr(t, key) < 0:
            e.append(f"train.{key}={getattr(t, key)} is negative; it must be >= 0")
    if t.time_budget_s < 0:
        e.append(f"train.time_budget_s={t.time_budget_s} is negative; use 0 (off) or seconds > 0")
    if t.keep_checkpoints < 1:
        e.append(f"train.keep_checkpoints={t.keep_checkpoints}: keep at least 1 checkpoint")


def _eval_and_tracking(cfg: Config, e: list[str]) -> None:
    ev = cfg.eval
    _positive("eval.knn_k", ev.knn_k, e)
    if ev.semi_steps < 0 or ev.tsne_points < 0:
        e.append("eval.semi_steps and eval.tsne_points must be >= 0 (0 turns them off)")
    if ev.knn_every < 0:
        e.append(f"eval.knn_every must be >= 0, got {ev.knn_every}")
    problem = tracking_uri_problem(cfg.tracking.uri)
    if problem:
        e.append(problem)
    _positive("tracking.system_metrics_interval", cfg.tracking.system_metrics_interval, e)


def problems(cfg: Config) -> list[str]:
    """Every problem in `cfg`, each value's first, then the rules between keys (rules.py)."""
    e: list[str] = []
    for check in (_data, _model_and_loss, _optim_and_train, _eval_and_tracking):
        check(cfg, e)
    return e + rules.problems(cfg)
