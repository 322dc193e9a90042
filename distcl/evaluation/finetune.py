"""Semi-supervised evaluation: fine-tune the encoder on 1% and 10% of the labels.

SimCLR section 6 (Chen et al. 2020): a fixed, seeded, class-balanced subset of the train split;
encoder + linear head fine-tuned, scored on test. Runs in the driver on CPU after training.
What gets logged (the subsets' indices and hashes) is returned, and written to the run by
distcl.evaluation.record with the rest of the final evaluation.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from distcl.config.schema import Config
from distcl.evaluation.evaluate import balanced_subset, extract_features, subset_hash
from distcl.evaluation.probe import (
    PROBE_ITERS,
    PROBE_L2,
    fit_head,
    new_head,
    preconditioner,
    topk_accuracy,
)

SEMI_FRACTIONS = ((0.01, "1pct"), (0.1, "10pct"))  # SimCLR Table 7 label fractions
SEMI_MAX_EPOCHS = 60  # SimCLR fine-tunes 60 epochs on 1% of ImageNet (Appendix B.5)


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


def _probed_model(encoder: nn.Module, images: torch.Tensor, y: torch.Tensor, classes: int):
    """A copy of `encoder` followed by a linear head fitted (L-BFGS probe) on its frozen
    features of `images` (`n x C x H x W`, labels `y`)."""
    model_enc = copy.deepcopy(encoder).to(torch.device("cpu"))
    with torch.no_grad():
        model_enc.eval()
        feats = torch.cat([model_enc(images[i : i + 1000]) for i in range(0, len(images), 1000)])
    head = new_head(feats, classes)
    z = head.standardise(feats).detach()
    fit_head(head, z, y, PROBE_L2[1], PROBE_ITERS, preconditioner(z))
    return nn.Sequential(model_enc, head)


def _train(model: nn.Module, images, y, *, steps: int, batch: int, lr: float, seed: int) -> None:
    """AdamW on crop-and-flip views, cosine-decayed `lr`, no weight decay, BN statistics frozen."""
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
    images, y = extract_features(
        nn.Identity(),
        train_path,
        channels=channels,
        device=cpu,
        indices=indices,
        num_workers=num_workers,
    )  # n x C x H x W
    model = _probed_model(encoder, images, y, classes)
    batch = min(batch_size, len(images))
    steps = min(steps, SEMI_MAX_EPOCHS * math.ceil(len(images) / batch))
    _train(model, images, y, steps=steps, batch=batch, lr=lr, seed=seed)
    logits, ty = extract_features(
        model, test_path, channels=channels, device=cpu, num_workers=num_workers
    )  # M x K
    top5 = topk_accuracy(logits, ty, 5) if classes > 5 else None
    return SemiResult(
        fraction, topk_accuracy(logits, ty, 1), top5, len(indices), steps, subset_hash(indices)
    )


def semi_supervised(
    cfg: Config, encoder: nn.Module, data: dict, labels: torch.Tensor
) -> tuple[dict[str, float], list[tuple[str, SemiResult, np.ndarray]]]:
    """Fine-tune on the fixed 1% and 10% label subsets: the accuracies, and per subset its tag
    (`1pct`), result and indices for the run's record."""
    out: dict[str, float] = {}
    subsets: list[tuple[str, SemiResult, np.ndarray]] = []
    if labels.min() < 0 or cfg.eval.semi_steps <= 0:
        return out, subsets  # unlabelled split, or switched off
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
        subsets.append((tag, r, idx))
    return out, subsets
