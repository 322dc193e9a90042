"""The evaluation at the end of a run: probes of the trained encoder against its baselines.

Runs in the driver on CPU after training: kNN and linear probe on frozen features, semi-supervised
fine-tuning on 1% and 10% of the labels (SimCLR section 6, Chen et al. 2020: a fixed, seeded,
class-balanced subset; encoder + linear head fine-tuned, scored on test), the baselines (see
distcl.evaluation.baselines), and the artifacts: loss/accuracy curves, a t-SNE of test features, and the
encoder as an MLflow model.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from distcl.config.schema import Config
from distcl.evaluation.evaluate import (
    PROBE_ITERS,
    PROBE_L2,
    extract_features,
    fit_head,
    frozen_feature_kwargs,
    new_head,
    preconditioner,
    subset_hash,
    topk_accuracy,
)
from distcl.runtime import checkpoint
from distcl.runtime.precision import to_channels_last
from distcl.tracking import core as tracking
from distcl.tracking import review as tracking_review

SEMI_FRACTIONS = ((0.01, "1pct"), (0.1, "10pct"))  # SimCLR Table 7 label fractions
CURVES = ("loss", "lr", "knn_acc", "images_per_s")  # per-epoch metrics drawn in curves.png
SEMI_MAX_EPOCHS = 60  # SimCLR fine-tunes 60 epochs on 1% of ImageNet (Appendix B.5)


def load_encoder(cfg: Config, state: dict, meta: dict) -> torch.nn.Module:
    """The trained encoder of a checkpoint state (keys `encoder.*` of the method)."""
    from distcl.models.encoders import encoder_from_config

    m = cfg.model
    encoder = encoder_from_config(m, meta["channels"])
    encoder.load_state_dict(checkpoint.encoder_state(state["model"]))
    return to_channels_last(encoder, cfg.train.channels_last).eval()


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random translation (pad 1/8 of the side, random crop back) and horizontal flip, per image,
    the crop-and-flip augmentation SimCLR uses for fine-tuning. `x`: B x C x H x W."""
    b, _, h, w = x.shape
    p = max(1, h // 8)
    padded = F.pad(x, (p, p, p, p), mode="replicate")
    dy = torch.randint(0, 2 * p + 1, (b,), generator=gen).tolist()
    dx = torch.randint(0, 2 * p + 1, (b,), generator=gen).tolist()
    out = torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(b)])
    flip = torch.rand(b, generator=gen) < 0.5
    out[flip] = out[flip].flip(-1)
    return out


@dataclass(frozen=True)
class SemiResult:
    fraction: float
    top1: float
    top5: float | None
    n_labels: int
    steps: int
    indices_sha256: str


def fine_tune(
    encoder: nn.Module,
    train_path: str,
    test_path: str,
    indices: np.ndarray,
    *,
    channels: int,
    classes: int,
    steps: int,
    batch_size: int = 128,
    lr: float = 1e-4,
    seed: int = 0,
    fraction: float = 0.0,
    num_workers: int = 1,
) -> SemiResult:
    """Fine-tune a copy of `encoder` + a linear head on the labelled `indices`; score on test.

    The head starts from an L-BFGS probe on the subset's frozen features (so the first steps do
    not push random-head gradients into the encoder), then encoder and head train together on
    crop-and-flip views, cosine-decayed `lr`, no weight decay (SimCLR Appendix B.5), for `steps`
    steps capped at SEMI_MAX_EPOCHS epochs of the subset. Two departures from SimCLR, for small
    CPU batches: batch-norm statistics stay frozen (affine weights train), and AdamW replaces
    Nesterov SGD, whose steps at lr 0.05 x B/256 sent a probe-initialised small CNN from 64% to
    chance on 10% of 2048 Fashion-MNIST images (the standardising head scales its gradients).
    The subset's images are held in memory as floats: fine for 1-10% of CIFAR/Fashion-MNIST-sized
    sets, not of ImageNet.
    """
    cpu = torch.device("cpu")
    model_enc = copy.deepcopy(encoder).to(cpu)
    images, y = extract_features(
        nn.Identity(),
        train_path,
        channels=channels,
        device=cpu,
        indices=indices,
        num_workers=num_workers,
    )  # n x C x H x W
    with torch.no_grad():
        model_enc.eval()
        feats = torch.cat([model_enc(images[i : i + 1000]) for i in range(0, len(images), 1000)])
    head = new_head(feats, classes)
    z = head.standardise(feats).detach()
    fit_head(head, z, y, PROBE_L2[1], PROBE_ITERS, preconditioner(z))
    model = nn.Sequential(model_enc, head)
    batch = min(batch_size, len(images))
    steps = min(steps, SEMI_MAX_EPOCHS * math.ceil(len(images) / batch))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, steps))
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for m in model.modules():  # BN statistics stay frozen: batches of <= 128 (SimCLR: 4096) are
        if isinstance(m, nn.modules.batchnorm._BatchNorm):  # too noisy, and the head was fit
            m.eval()  # on features normalised by these statistics
    for _ in range(steps):
        idx = torch.randint(0, len(images), (batch,), generator=gen)
        loss = F.cross_entropy(model(_augment(images[idx], gen)), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    logits, ty = extract_features(
        model, test_path, channels=channels, device=cpu, num_workers=num_workers
    )  # M x K
    top5 = topk_accuracy(logits, ty, 5) if classes > 5 else None
    return SemiResult(
        fraction, topk_accuracy(logits, ty, 1), top5, len(indices), steps, subset_hash(indices)
    )


def semi_supervised(
    cfg: Config, encoder: torch.nn.Module, data: dict, labels: torch.Tensor, logger=None
) -> dict[str, float]:
    """Fine-tune on the fixed 1% and 10% label subsets; log each subset's indices and hash."""
    from distcl.evaluation.evaluate import balanced_subset

    out: dict[str, float] = {}
    if labels.min() < 0 or cfg.eval.semi_steps <= 0:
        return out  # unlabelled split, or switched off
    for fraction, tag in SEMI_FRACTIONS:
        idx = balanced_subset(labels, fraction)
        r = fine_tune(
            encoder,
            data["train_eval_path"],
            data["test_path"],
            idx,
            channels=data["meta"]["channels"],
            classes=data["meta"]["num_classes"],
            steps=cfg.eval.semi_steps,
            seed=cfg.train.seed,
            fraction=fraction,
        )
        out[f"semi_{tag}_acc"] = r.top1
        if r.top5 is not None:
            out[f"semi_{tag}_top5"] = r.top5
        if logger is not None:
            logger.log_params(
                {f"semi.{tag}.indices_sha256": r.indices_sha256, f"semi.{tag}.labels": r.n_labels}
            )
            logger.set_tags({f"semi.{tag}.steps": r.steps})
            logger.log_text(json.dumps(idx.tolist()), f"semi/indices_{tag}.json")
    return out


@contextlib.contextmanager
def _stage(name: str):
    """Print what the evaluation is doing and how long it took: it runs minutes on a CPU."""
    print(f"distcl: evaluation: {name} ...", flush=True)
    t = time.perf_counter()
    yield
    print(f"distcl: evaluation: {name} done in {time.perf_counter() - t:.1f} s", flush=True)


def final_evaluation(cfg: Config, state: dict, data: dict, logger=None) -> dict[str, Any]:
    """kNN, linear probe and semi-supervised accuracy of the trained encoder and its baselines,
    logged to the run (metrics at step = epochs, plots, encoder model)."""
    from distcl.evaluation import baselines

    meta = data["meta"]
    encoder = load_encoder(cfg, state, meta)
    kw = frozen_feature_kwargs(cfg.train.precision, meta["channels"], cfg.train.use_gpu)
    with _stage("features of the train and test splits"):
        tr_x, tr_y = extract_features(encoder, data["train_eval_path"], **kw)  # N x F
        te_x, te_y = extract_features(encoder, data["test_path"], **kw)  # M x F
    with _stage("kNN" + (" and linear probe" if cfg.eval.probe else "")):
        out: dict[str, Any] = baselines.frozen_metrics(
            tr_x, tr_y, te_x, te_y, cfg.eval.knn_k, cfg.eval.probe
        )
    if cfg.eval.semi:
        with _stage("semi-supervised fine-tuning on 1% and 10% of the labels"):
            out.update(semi_supervised(cfg, encoder, data, tr_y, logger))
    if logger is not None:
        logger.set_tags(
            {
                "arch": baselines.arch_key(cfg),
                **baselines.split_tags(data),
                **({"baseline": "supervised"} if cfg.method.name == "supervised" else {}),
            }
        )
    if cfg.eval.baselines:
        uri = logger.uri if logger is not None else ""
        experiment = tracking.experiment_name(cfg)
        with _stage("baselines (computed once per dataset and split, then reused)"):
            found = baselines.all_baselines(
                cfg, data, uri, experiment, exclude_run=logger.run_id if logger else ""
            )
        out["baselines"] = {b.name: b.metrics for b in found}
        out["baseline_kinds"] = {b.name: b.kind for b in found}
    if logger is not None:
        log_results(cfg, out, logger)
        with _stage("plots and the encoder model to MLflow"):
            log_artifacts(cfg, logger, encoder, data, te_x, te_y)
        tracking_review.finish_review(logger, cfg, out)  # description; registry version
    return out


def log_results(cfg: Config, out: dict[str, Any], logger) -> None:
    """Final metrics at step = epochs; the computed baselines' figures as `<baseline>_<metric>`."""
    final = {k: v for k, v in out.items() if isinstance(v, float)}
    for name, metrics in out.get("baselines", {}).items():
        if out["baseline_kinds"][name] != "reference":
            final.update({f"{name}_{k}": v for k, v in metrics.items() if k != "probe_l2"})
    logger.log_metrics(final, step=cfg.train.epochs)


def log_artifacts(
    cfg: Config,
    logger,
    encoder: torch.nn.Module,
    data: dict,
    te_x: torch.Tensor,
    te_y: torch.Tensor,
) -> None:
    """curves.png, tsne.png and the encoder as an MLflow model."""
    from distcl.tracking import core as tracking

    tracking.log_figure(logger, curves_figure(logger), "plots/curves.png")
    if cfg.eval.tsne_points > 0:
        tracking.log_figure(
            logger, tsne_figure(te_x, te_y, cfg.eval.tsne_points, cfg.train.seed), "plots/tsne.png"
        )
    if cfg.tracking.log_model:
        example, _ = extract_features(
            torch.nn.Identity(),
            data["test_path"],
            channels=data["meta"]["channels"],
            device=torch.device("cpu"),
            indices=np.arange(2),
        )
        tracking.log_encoder(logger, encoder.eval(), example.numpy())  # registered by
        # tracking_review.finish_review, once the run's accuracies are known


def curves_figure(logger):
    """Loss, LR, kNN accuracy and throughput per epoch, from the run's metric history."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 6))
    for i, key in enumerate(CURVES):
        ax = fig.add_subplot(2, 2, i + 1)
        points = sorted(logger.metric_history(key))
        if points:
            ax.plot([s for s, _ in points], [v for _, v in points], marker="o", ms=3)
        ax.set_title(key)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def tsne_figure(features: torch.Tensor, labels: torch.Tensor, points: int, seed: int = 0):
    """2-D t-SNE (sklearn) of up to `points` test features (`M x F`), coloured by class."""
    from matplotlib.figure import Figure
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(features), min(points, len(features)), replace=False))
    x = torch.nn.functional.normalize(features[pick].float(), dim=1).numpy()
    if x.shape[1] > 50:  # PCA first, as sklearn's TSNE docs advise: faster, less noise
        x = PCA(50, random_state=seed).fit_transform(x)
    xy = TSNE(
        2, init="pca", perplexity=min(30.0, (len(x) - 1) / 3), random_state=seed, max_iter=500
    ).fit_transform(x)
    fig = Figure(figsize=(6, 6))
    ax = fig.add_subplot()
    sc = ax.scatter(xy[:, 0], xy[:, 1], c=labels[pick].numpy(), cmap="tab10", s=4)
    ax.legend(*sc.legend_elements(), title="class", fontsize=7, loc="best", markerscale=0.8)
    ax.set_title(f"t-SNE of {len(x)} test features")
    ax.set_xticks([])
    ax.set_yticks([])
    return fig


def print_table(name: str, results: dict[str, Any]) -> None:
    """Run and baselines side by side, with Δ linear accuracy against raw pixels."""

    def pct(v):
        return f"{100 * v:.2f}%" if isinstance(v, float) else "-"

    rows = [(name, results)] + list(results.get("baselines", {}).items())
    ref = results.get("baselines", {}).get("raw_pixels", {}).get("linear_acc")
    print(f"\n{'method':<28} {'kNN acc':>8} {'linear acc':>11} {'Δ linear vs raw':>16}")
    for label, r in rows:
        lin = r.get("linear_acc")
        delta = f"{100 * (lin - ref):+.2f} pts" if ref is not None and lin is not None else "-"
        print(f"{label:<28} {pct(r.get('knn_acc')):>8} {pct(lin):>11} {delta:>16}")
    for key in ("semi_1pct_acc", "semi_10pct_acc"):
        if key in results:
            print(f"{name}: {key} {pct(results[key])}")
    print()
