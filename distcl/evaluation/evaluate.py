"""Frozen features and what needs nothing else: kNN, the in-training kNN monitor, raw pixels,
and the fixed label subsets for fine-tuning.

All figures are accuracies in [0, 1] on the test split; features are L2-normalised before the
kNN vote. The linear probe lives in distcl.evaluation.probe, the semi-supervised fine-tuning
(SimCLR section 6) in distcl.evaluation.finetune.
"""

from __future__ import annotations

import contextlib
import hashlib
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from distcl.config.schema import Config
from distcl.data.loader import eval_loader, to_float
from distcl.runtime import dist
from distcl.runtime.precision import autocast, use_bf16

KNN_T = 0.07  # temperature of the similarity-weighted kNN vote (Wu et al. 2018, InstDisc)
KNN_MONITOR_TEST = 10000  # test images the in-training monitor embeds: bounds its cost per call
SEMI_SEED = 0  # the label subsets are fixed across runs, like SimCLR's published ImageNet subsets


@contextlib.contextmanager
def stage(name: str):
    """Print what the evaluation is doing and how long it took: it runs minutes on a CPU."""
    print(f"distcl: evaluation: {name} ...", flush=True)
    t = time.perf_counter()
    yield
    print(f"distcl: evaluation: {name} done in {time.perf_counter() - t:.1f} s", flush=True)


def frozen_feature_kwargs(precision: str, channels: int, use_gpu: bool = False) -> dict:
    """`extract_features` keywords for a finished run's encoder in the driver: its GPU when the
    run trained on GPUs (`train.use_gpu`) and this process sees one, else its CPU; bf16 where the
    run trained in it and the device has it (~2.6x the fp32 forward speed on a bf16 CPU). On an
    H200, ResNet-18 features of 25,600 CIFAR images took over 80 s on 16 CPU cores."""
    device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
    return {
        "channels": channels,
        "device": device,
        "num_workers": 2,
        "use_bf16": use_bf16(precision, device),
    }


@torch.no_grad()
def extract_features(
    encoder: nn.Module,
    path: str,
    *,
    channels: int,
    device,
    indices: np.ndarray | None = None,
    batch_size: int = 1000,
    num_workers: int = 1,
    use_bf16: bool = False,
):
    """Encoder outputs `N x F` (float32, CPU) and labels `N` for the images of a `.beton`."""
    was_training = encoder.training
    home = next((t.device for t in encoder.parameters()), None)
    encoder.eval().to(device)
    feats, labels = [], []
    loader = eval_loader(path, batch_size=batch_size, num_workers=num_workers, indices=indices)
    for images, y in loader:
        with autocast(device, use_bf16):
            f = encoder(to_float(images, channels, device))
        # FFCV reuses its output buffers for later batches: keep copies, not views.
        feats.append(f.float().cpu().clone())
        labels.append(y.cpu().clone())
    encoder.train(was_training)
    if home is not None:
        encoder.to(home)  # the caller's module stays where it was
    return torch.cat(feats), torch.cat(labels)


def frozen_features(cfg: Config, encoder: nn.Module, data: dict, channels: int):
    """Train and test features and labels (`N x F`, `N`, `M x F`, `M`) of a finished run's
    encoder, on the device `frozen_feature_kwargs` picks for it."""
    kw = frozen_feature_kwargs(cfg.train.precision, channels, cfg.train.use_gpu)
    return (
        *extract_features(encoder, data["train_eval_path"], **kw),
        *extract_features(encoder, data["test_path"], **kw),
    )


def knn_accuracy(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    k: int = 20,
    t: float = KNN_T,
    chunk: int = 1000,
) -> float:
    """Cosine kNN: each test point votes its k nearest train points, weighted by exp(sim / t)."""
    train_x = F.normalize(train_x.float(), dim=1)
    test_x = F.normalize(test_x.float(), dim=1)
    classes = int(max(train_y.max(), test_y.max())) + 1
    correct = 0
    for i in range(0, len(test_x), chunk):
        sim = test_x[i : i + chunk] @ train_x.T  # c x N_train
        top_sim, top_idx = sim.topk(min(k, len(train_x)), dim=1)  # c x k
        votes = torch.zeros(len(top_sim), classes, device=top_sim.device)
        votes.scatter_add_(1, train_y[top_idx], (top_sim / t).exp())
        correct += int((votes.argmax(1) == test_y[i : i + chunk]).sum())
    return correct / len(test_x)


@torch.no_grad()
def knn_monitor(
    encoder,
    bank_path: str,
    test_path: str,
    *,
    k: int,
    channels: int,
    device,
    bank_size: int,
    use_bf16: bool = False,
    test_size: int = KNN_MONITOR_TEST,
) -> float:
    """kNN accuracy during training: each rank embeds its shard, features are gathered.

    Cost per call is bounded: at most `bank_size` (0 = all) bank and `test_size` test images
    are embedded, split across ranks, and the vote is `test x bank` similarities in chunks.
    """
    rank, world = dist.get_rank(), dist.get_world_size()
    from distcl.data.beton import read_meta

    def shard(path: str, limit: int) -> np.ndarray:
        n = read_meta(path)["count"]
        n = min(n, limit) if limit else n
        n -= n % world  # equal shards, so the gather lines up
        return np.arange(rank, n, world)

    kw = {"channels": channels, "device": device, "use_bf16": use_bf16}
    bx, by = extract_features(encoder, bank_path, indices=shard(bank_path, bank_size), **kw)
    tx, ty = extract_features(encoder, test_path, indices=shard(test_path, test_size), **kw)
    bx, by, tx, ty = (dist.gather_no_grad(t.to(device)).cpu() for t in (bx, by, tx, ty))
    return knn_accuracy(bx, by, tx, ty, k=k)


def raw_pixels(path: str, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Flattened pixels in [-1, 1] as features `N x (C*H*W)`."""
    return extract_features(nn.Flatten(), path, channels=channels, device=torch.device("cpu"))


def balanced_subset(labels: torch.Tensor, fraction: float, seed: int = SEMI_SEED) -> np.ndarray:
    """Sorted indices of a class-balanced `fraction` of `labels` (`N`): round(fraction * n_c)
    images of each class c (at least one), drawn with a fixed seed so every run gets the same."""
    if not 0 < fraction <= 1:
        raise ValueError(f"label fraction must be in (0, 1], got {fraction} (SimCLR: 0.01, 0.1)")
    rng = np.random.default_rng(seed)
    y = labels.numpy()
    picks = []
    for c in np.unique(y[y >= 0]):  # -1 marks unlabelled images
        idx = np.flatnonzero(y == c)
        picks.append(rng.choice(idx, size=max(1, round(fraction * len(idx))), replace=False))
    return np.sort(np.concatenate(picks)).astype(np.int64)


def subset_hash(indices: np.ndarray) -> str:
    """A short, stable fingerprint of a label subset (sha256 of the int64 indices)."""
    return hashlib.sha256(np.ascontiguousarray(indices, dtype=np.int64).tobytes()).hexdigest()[:16]
