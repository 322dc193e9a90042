"""Evaluation of frozen features: kNN classifier, linear probe, raw-pixel baselines.

All figures are top-1 accuracy in [0, 1] on the test split. Features are L2-normalised before
either classifier. The linear probe is multinomial logistic regression trained with full-batch
L-BFGS in torch; its L2 strength is chosen on a held-out 10% of the train split, never on test.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from distcl import dist
from distcl.data.loader import eval_loader, to_float
from distcl.precision import autocast

KNN_T = 0.07  # temperature of the similarity-weighted kNN vote (Wu et al. 2018, InstDisc)
PROBE_L2 = (1e-2, 1e-3, 1e-4, 1e-5, 1e-6)  # candidate L2 strengths (mean-loss scale) for the probe


@torch.no_grad()
def extract_features(encoder: torch.nn.Module, path: str, *, channels: int, device,
                     indices: np.ndarray | None = None, batch_size: int = 1000,
                     num_workers: int = 1, use_bf16: bool = False):
    """Encoder features `N x F` (float32, CPU) and labels `N` for the images of a `.beton`."""
    was_training = encoder.training
    encoder.eval()
    feats, labels = [], []
    loader = eval_loader(path, batch_size=batch_size, num_workers=num_workers, indices=indices)
    for images, y in loader:
        with autocast(device, use_bf16):
            f = encoder(to_float(images, channels, device))
        # FFCV reuses its output buffers for later batches: keep copies, not views.
        feats.append(f.float().cpu().clone())
        labels.append(y.cpu().clone())
    encoder.train(was_training)
    return torch.cat(feats), torch.cat(labels)


def knn_accuracy(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor,
                 test_y: torch.Tensor, k: int = 20, t: float = KNN_T, chunk: int = 1000) -> float:
    """Cosine kNN: each test point votes its k nearest train points, weighted by exp(sim / t)."""
    train_x = F.normalize(train_x.float(), dim=1)
    test_x = F.normalize(test_x.float(), dim=1)
    classes = int(max(train_y.max(), test_y.max())) + 1
    correct = 0
    for i in range(0, len(test_x), chunk):
        sim = test_x[i : i + chunk] @ train_x.T  # c x N_train
        top_sim, top_idx = sim.topk(min(k, len(train_x)), dim=1)  # c x k
        votes = torch.zeros(len(top_sim), classes)
        votes.scatter_add_(1, train_y[top_idx], (top_sim / t).exp())
        correct += int((votes.argmax(1) == test_y[i : i + chunk]).sum())
    return correct / len(test_x)


@torch.no_grad()
def knn_monitor(encoder, bank_path: str, test_path: str, *, k: int, channels: int, device,
                bank_size: int, use_bf16: bool = False) -> float:
    """kNN accuracy during training: each rank embeds its shard, features are gathered."""
    rank, world = dist.get_rank(), dist.get_world_size()
    from distcl.data.beton import read_meta

    def shard(path: str, limit: int) -> np.ndarray:
        n = read_meta(path)["count"]
        n = min(n, limit) if limit else n
        n -= n % world  # equal shards, so the gather lines up
        return np.arange(rank, n, world)

    bx, by = extract_features(encoder, bank_path, channels=channels, device=device,
                              indices=shard(bank_path, bank_size), use_bf16=use_bf16)
    tx, ty = extract_features(encoder, test_path, channels=channels, device=device,
                              indices=shard(test_path, 0), use_bf16=use_bf16)
    bx, by, tx, ty = (dist.gather_no_grad(t.to(device)).cpu() for t in (bx, by, tx, ty))
    return knn_accuracy(bx, by, tx, ty, k=k)


@dataclass(frozen=True)
class ProbeResult:
    top1: float
    top5: float
    l2: float  # the L2 strength chosen on the validation split
    val_top1: float


def _fit_logreg(x: torch.Tensor, y: torch.Tensor, classes: int, l2: float, iters: int = 100,
                init: torch.nn.Linear | None = None) -> torch.nn.Linear:
    """Full-batch L-BFGS on mean cross-entropy + l2 * ||W||^2 (bias not penalised)."""
    model = torch.nn.Linear(x.shape[1], classes)
    with torch.no_grad():
        model.weight.copy_(init.weight if init is not None else torch.zeros_like(model.weight))
        model.bias.copy_(init.bias if init is not None else torch.zeros_like(model.bias))
    opt = torch.optim.LBFGS(model.parameters(), lr=1.0, max_iter=iters, history_size=10,
                            tolerance_grad=1e-6, tolerance_change=1e-9,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y) + l2 * model.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return model


def _topk(model: torch.nn.Linear, x: torch.Tensor, y: torch.Tensor, k: int) -> float:
    with torch.no_grad():
        pred = model(x).topk(min(k, model.out_features), dim=1).indices
    return float((pred == y[:, None]).any(1).double().mean())


def linear_probe(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor,
                 test_y: torch.Tensor, l2_grid=PROBE_L2, val_frac: float = 0.1,
                 seed: int = 0) -> ProbeResult:
    """Multinomial logistic regression on L2-normalised, standardised features.

    The L2 strength is picked on a seeded, held-out `val_frac` of the train split; the probe is
    then refit on the whole train split and scored once on test.
    """
    x = F.normalize(train_x.float(), dim=1)
    xt = F.normalize(test_x.float(), dim=1)
    mean, std = x.mean(0), x.std(0).clamp_min(1e-8)  # standardising is an affine map: still linear
    x, xt = (x - mean) / std, (xt - mean) / std
    classes = int(max(train_y.max(), test_y.max())) + 1
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    n_val = int(len(x) * val_frac)
    val, tr = perm[:n_val], perm[n_val:]
    scores, fits, prev = {}, {}, None
    for l2 in sorted(l2_grid, reverse=True):  # strongest first; each fit warm-starts the next
        prev = fits[l2] = _fit_logreg(x[tr], train_y[tr], classes, l2, init=prev)
        scores[l2] = _topk(prev, x[val], train_y[val], 1)
    best = max(scores, key=lambda l2: (scores[l2], l2))
    model = _fit_logreg(x, train_y, classes, best, init=fits[best])
    return ProbeResult(_topk(model, xt, test_y, 1), _topk(model, xt, test_y, 5), best, scores[best])


def raw_pixels(path: str, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Flattened pixels in [-1, 1] as features `N x (C*H*W)`."""
    flatten = torch.nn.Flatten()
    return extract_features(flatten, path, channels=channels, device=torch.device("cpu"))
