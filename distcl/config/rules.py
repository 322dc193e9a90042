"""Rules between settings, each written once: what one key allows of another.

validate.py checks each value on its own; the rules here check values against each other:
a method against its views, its queue and gradient caching; the global batch against the
workers and the chunk size; label-hungry methods and losses against an unlabelled split.
validate.problems(cfg) ends with `problems(cfg)`, so every rule runs when a Config is
built: in the driver by `distcl train` and `distcl sweep` before distcl/job/driver.py (or the sweep)
starts Ray, and again in each worker's `from_flat`. Torch-free, like the rest of the package.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from distcl.config import names

if TYPE_CHECKING:  # only for the annotations: schema.build imports this module
    from distcl.config.schema import Config

# One query view and one key view per image: the momentum methods and Barlow Twins pair
# exactly two views (multi-crop is SwAV's; SimCLR's NT-Xent takes any V >= 2).
TWO_VIEW_METHODS = ("moco_v2", "moco_v3", "byol", "barlow")


def _nearest_divisors(n: int, near: int) -> list[int]:
    """The two divisors of `n` closest to `near` (ties: the larger)."""
    divisors = [d for d in range(1, n + 1) if n % d == 0]
    return sorted(divisors, key=lambda d: (abs(d - near), -d))[:2]


def batch_split_problem(global_batch: int, num_workers: int, chunk_size: int = 0) -> str | None:
    """What stops `global_batch` splitting into `num_workers` equal shards of whole chunks, or None.

    Every worker gets `global_batch / num_workers` images, cut into gradient-caching chunks of
    exactly `chunk_size` (0 = no caching): equal chunks keep per-chunk BatchNorm statistics
    comparable and the gathers equal-sized. Values <= 0 are validate.py's to report.
    """
    if global_batch <= 0 or num_workers <= 0 or chunk_size < 0:
        return None
    if not chunk_size:
        if global_batch % num_workers == 0:
            return None
        lower = global_batch - global_batch % num_workers
        fits = " or ".join(str(b) for b in (lower, lower + num_workers) if b > 0)
        return (
            f"train.global_batch={global_batch} does not divide by train.num_workers="
            f"{num_workers}; use {fits}"
        )
    unit = num_workers * chunk_size
    if global_batch % unit == 0:
        return None
    lower = global_batch - global_batch % unit
    fits = " or ".join(str(b) for b in (lower, lower + unit) if b > 0)
    msg = (
        f"train.global_batch={global_batch} is not divisible by train.num_workers={num_workers}"
        f" x train.chunk_size={chunk_size} = {unit}: set train.global_batch to {fits}"
    )
    if global_batch % num_workers:
        return msg + f" (it does not even divide by train.num_workers={num_workers})"
    local = global_batch // num_workers
    chunks = " or ".join(str(c) for c in _nearest_divisors(local, chunk_size))
    return msg + f", or train.chunk_size to {chunks} (divisors of the per-worker batch {local})"


def method_problems(cfg: Config) -> list[str]:
    """What `method.name` cannot do with these views, queue and chunk size."""
    name, out = cfg.method.name, []
    if name in TWO_VIEW_METHODS and cfg.data.views != 2:
        out.append(f"method.name={name} uses 2 views, got data.views={cfg.data.views}")
    # MoCo v2 writes every step's keys of all workers into the queue at once.
    if name == "moco_v2" and cfg.method.queue_size < cfg.train.global_batch:
        out.append(
            f"method.queue_size={cfg.method.queue_size} must be >= train.global_batch="
            f"{cfg.train.global_batch} (MoCo v2: 65536)"
        )
    if cfg.train.chunk_size and name not in names.LOSS_METHODS:
        out.append(
            f"train.chunk_size (gradient caching) works with method.name="
            f"{' or '.join(names.LOSS_METHODS)}, not {name}; set train.chunk_size=0"
        )
    return out


def label_problems(cfg: Config) -> list[str]:
    """Methods and losses that need class labels, on a split that has none."""
    d, out = cfg.data, []
    if d.dataset != "stl10" or "unlabeled" not in d.split:  # labels -1 (distcl.data.native)
        return out
    if cfg.loss.name in names.LABEL_LOSSES:
        out.append(
            f"loss.name={cfg.loss.name} needs class labels, but data.split={d.split} has none"
        )
    if cfg.method.name in names.LABEL_METHODS:
        out.append(
            f"method.name={cfg.method.name} needs class labels, but data.split={d.split} "
            "has none (use data.split=train)"
        )
    return out


def text_problems(cfg: Config) -> list[str]:
    """A text dataset needs the text encoder and a loss-based method, and the reverse."""
    d, m, out = cfg.data, cfg.model, []
    text, text_arch = d.dataset in names.TEXT_DATASETS, m.arch in names.TEXT_ARCHS
    if text and not text_arch:
        out.append(
            f"data.dataset={d.dataset} is text: set model.arch={names.TEXT_ARCHS[0]} "
            "(or start from the wordnet_simcse preset)"
        )
    if text_arch and not text:
        out.append(
            f"model.arch={m.arch} encodes text; data.dataset={d.dataset} holds images "
            f"(text datasets: {', '.join(names.TEXT_DATASETS)})"
        )
    if text and cfg.method.name not in names.LOSS_METHODS:
        out.append(
            f"method.name={cfg.method.name} is not available for text yet; use "
            f"{' or '.join(names.LOSS_METHODS)}"
        )
    if text and d.loader != "ffcv":
        out.append(f"data.loader={d.loader}: text is read from .beton files only; use ffcv")
    if text and d.preset not in names.TEXT_VIEWS:
        out.append(
            f"data.preset={d.preset} is an image view recipe; a text dataset takes "
            f"{', '.join(names.TEXT_VIEWS)} (pairs: a record's two texts; dropout: SimCSE)"
        )
    if text and cfg.data.views != 2:
        out.append(f"data.views={d.views}: a text pair gives 2 views; use data.views=2")
    return out


def problems(cfg: Config) -> list[str]:
    """Every rule `cfg` breaks, each message naming the keys, their values and the fix."""
    t = cfg.train
    batch = batch_split_problem(t.global_batch, t.num_workers, t.chunk_size)
    more = [*method_problems(cfg), *label_problems(cfg), *text_problems(cfg)]
    return [*([batch] if batch else []), *more]
