"""The final evaluation's record in its MLflow run, written in one call once every figure is
known: tags that find the run's baselines, the label subsets, the metrics at step = epochs,
loss/accuracy curves, a t-SNE of test features, the encoder as an MLflow model, and the run's
review (description, registry version)."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import torch

from distcl.config.schema import Config
from distcl.evaluation.baselines import arch_key, split_tags
from distcl.evaluation.evaluate import extract_features, stage
from distcl.evaluation.finetune import SemiResult
from distcl.tracking import core as tracking
from distcl.tracking import review as tracking_review

CURVES = ("loss", "lr", "knn_acc", "images_per_s")  # per-epoch metrics drawn in curves.png


def log_final(
    cfg: Config,
    logger: tracking.RunLogger,
    out: dict[str, Any],
    subsets: list[tuple[str, SemiResult, np.ndarray]],
    encoder: torch.nn.Module,
    data: dict,
    test_features: tuple[torch.Tensor, torch.Tensor],
) -> None:
    """Everything the final evaluation leaves in the run; `test_features`: `M x F` and `M`."""
    logger.set_tags(
        {
            "arch": arch_key(cfg),
            **split_tags(data),
            **({"baseline": "supervised"} if cfg.method.name == "supervised" else {}),
        }
    )
    log_subsets(logger, subsets)
    log_results(cfg, out, logger)
    with stage("plots and the encoder model to MLflow"):
        log_artifacts(cfg, logger, encoder, data, *test_features)
    tracking_review.finish_review(logger, cfg, out)  # description; registry version


def log_subsets(logger, subsets: list[tuple[str, SemiResult, np.ndarray]]) -> None:
    """Each fine-tuning label subset's size, hash, steps and indices (`semi/indices_1pct.json`)."""
    for tag, r, idx in subsets:
        logger.log_params(
            {f"semi.{tag}.indices_sha256": r.indices_sha256, f"semi.{tag}.labels": r.n_labels}
        )
        logger.set_tags({f"semi.{tag}.steps": r.steps})
        logger.log_text(json.dumps(idx.tolist()), f"semi/indices_{tag}.json")


def log_results(cfg: Config, out: dict[str, Any], logger) -> None:
    """Final metrics at the step of the last epoch trained (`train.epochs` unless a time budget
    planned fewer); the computed baselines' figures as `<baseline>_<metric>`."""
    final = {k: v for k, v in out.items() if isinstance(v, float)}
    for name, metrics in out.get("baselines", {}).items():
        if out["baseline_kinds"][name] != "reference":
            final.update({f"{name}_{k}": v for k, v in metrics.items() if k != "probe_l2"})
    logger.log_metrics(final, step=math.ceil(out.get("epochs_trained", cfg.train.epochs)))


def log_artifacts(
    cfg: Config,
    logger,
    encoder: torch.nn.Module,
    data: dict,
    te_x: torch.Tensor,
    te_y: torch.Tensor,
) -> None:
    """curves.png, tsne.png and the encoder as an MLflow model."""
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
