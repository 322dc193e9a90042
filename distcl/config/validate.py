"""Config validation: every rule names the key, the bad value and what is allowed.

`validate(cfg)` checks values alone and runs when a Config is built. `preflight(cfg)` in
distcl.config.preflight checks the world (data files, storage, tracking server, CPUs) before Ray starts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from distcl.config.schema import Config

DATASETS = ("fashion_mnist", "cifar10", "cifar100", "stl10", "imagefolder", "synthetic")
ARCHS = ("small_cnn", "resnet18", "resnet50")
METHODS = ("simclr", "supcon", "supervised", "moco_v2", "moco_v3", "byol", "swav", "barlow")
OPTIMIZERS = ("adamw", "sgd", "lars")
LR_SCALING = ("none", "linear", "sqrt")
# Splits each dataset's reader knows (distcl/data/sources.py); imagefolder: any sub-folder.
SPLITS = {
    "fashion_mnist": ("train", "test"),
    "cifar10": ("train", "test"),
    "cifar100": ("train", "test"),
    "stl10": ("train", "test", "unlabeled", "train+unlabeled"),
    "synthetic": ("train", "test"),
}
# ffcv: .beton files, compiled per-image augmentations; torchvision: a DataLoader over the raw
# files with the same views and sharding, for machines where FFCV cannot be built (much slower)
LOADERS = ("ffcv", "torchvision")
STORAGE = ("raw", "jpeg", "jpg", "smart", "proportion")  # FFCV RGBImageField write modes
PRECISIONS = ("auto", "bf16", "fp32")
PLACEMENTS = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")
DISTANCES = ("cosine", "euclidean")
MINING = ("batch_all", "batch_hard", "semi_hard")
# MLflow tracking stores (mlflow.store.tracking): a server over HTTP(S), a SQLAlchemy database
# (the part before "+" names it: postgresql+psycopg2://), Databricks, or a file store.
TRACKING_SCHEMES = ("http", "https", "sqlite", "postgresql", "mysql", "mssql", "databricks", "file")


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


def _loss_names() -> tuple[str, ...]:
    from distcl.losses import LOSSES

    return tuple(LOSSES)


def _label_losses() -> set[str]:
    from distcl.losses import LOSSES

    return {n for n, s in LOSSES.items() if s.needs_labels}


def _method_names() -> tuple[str, ...]:
    try:
        from distcl.models.methods import METHODS as registry
    except ImportError:
        return METHODS
    return tuple(registry)


def _choice(key: str, value: str, allowed: tuple[str, ...], errors: list[str]) -> None:
    if value not in allowed:
        errors.append(f"{key}={value!r} is not one of: {', '.join(allowed)}")


def _positive(key: str, value: float, errors: list[str], hint: str = "") -> None:
    if not value > 0:
        errors.append(f"{key} must be > 0, got {value}" + (f" ({hint})" if hint else ""))


def validate(cfg: Config) -> None:
    """Raise ConfigError listing every problem in `cfg` at once."""
    from distcl.config.schema import ConfigError

    e: list[str] = []
    d, m, lo, o, t, ev = cfg.data, cfg.model, cfg.loss, cfg.optim, cfg.train, cfg.eval
    _choice("data.dataset", d.dataset, DATASETS, e)
    _choice("data.loader", d.loader, LOADERS, e)
    _positive("data.resolution", d.resolution, e, "try 28 for Fashion-MNIST, 32 for CIFAR")
    if d.views < 2:
        e.append(f"data.views must be >= 2 for contrastive learning, got {d.views}")
    if not 0 < d.crop_scale_min <= 1:
        e.append(f"data.crop_scale_min must be in (0, 1], got {d.crop_scale_min} (SimCLR: 0.08)")
    if not 0 <= d.jitter_p <= 1:
        e.append(f"data.jitter_p must be a probability in [0, 1], got {d.jitter_p}")
    if d.jitter < 0:
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
    _choice("model.arch", m.arch, ARCHS, e)
    for key in ("width", "proj_hidden", "proj_dim"):
        _positive(f"model.{key}", getattr(m, key), e)
    if m.blocks < 0 or m.feat_dim < 0:
        e.append(
            f"model.blocks={m.blocks} and model.feat_dim={m.feat_dim} must be >= 0 "
            "(feat_dim=0 means 8 x model.width)"
        )
    _choice("method.name", cfg.method.name, _method_names(), e)
    _choice("loss.name", lo.name, _loss_names(), e)
    _positive("loss.temperature", lo.temperature, e, "try 0.1 to 0.5")
    _choice("loss.distance", lo.distance, DISTANCES, e)
    _choice("loss.mining", lo.mining, MINING, e)
    if lo.margin < 0 or lo.neg_margin < 0 or lo.pos_margin < 0 or lo.l2_reg < 0:
        e.append("loss.margin, loss.pos_margin, loss.neg_margin and loss.l2_reg must be >= 0")
    if d.dataset == "stl10" and "unlabeled" in d.split:  # labels -1 (distcl.data.native)
        if lo.name in _label_losses():
            e.append(f"loss.name={lo.name} needs class labels, but data.split={d.split} has none")
        if cfg.method.name in ("supcon", "supervised"):
            e.append(
                f"method.name={cfg.method.name} needs class labels, but data.split={d.split} "
                "has none (use data.split=train)"
            )
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
    if t.global_batch > 0 and t.num_workers > 0:
        per_worker = t.global_batch // t.num_workers
        if t.global_batch % t.num_workers:
            lo_b = t.global_batch - t.global_batch % t.num_workers
            e.append(
                f"train.global_batch={t.global_batch} does not divide by train.num_workers="
                f"{t.num_workers}; use {lo_b} or {lo_b + t.num_workers}"
            )
        elif t.chunk_size and per_worker % t.chunk_size:
            step = t.num_workers * t.chunk_size
            lo_b = max(step, t.global_batch - t.global_batch % step)
            e.append(
                f"train.global_batch={t.global_batch} is not divisible by train.num_workers="
                f"{t.num_workers} x train.chunk_size={t.chunk_size}; use global_batch {lo_b} or "
                f"{lo_b + step}, or a chunk_size that divides {per_worker}"
            )
    if t.chunk_size and cfg.method.name not in ("simclr", "supcon"):
        e.append(
            f"train.chunk_size (gradient caching) works with method.name=simclr or supcon, "
            f"not {cfg.method.name}; set train.chunk_size=0"
        )
    _positive("eval.knn_k", ev.knn_k, e)
    if ev.semi_steps < 0 or ev.tsne_points < 0:
        e.append("eval.semi_steps and eval.tsne_points must be >= 0 (0 turns them off)")
    problem = tracking_uri_problem(cfg.tracking.uri)
    if problem:
        e.append(problem)
    _positive("tracking.system_metrics_interval", cfg.tracking.system_metrics_interval, e)
    if ev.knn_every < 0:
        e.append(f"eval.knn_every must be >= 0, got {ev.knn_every}")
    if e:
        raise ConfigError("invalid config:\n  - " + "\n  - ".join(e))
