"""Evaluation: kNN against a naive reference, the linear probe against scikit-learn, the bounded
kNN monitor, class-balanced label subsets and semi-supervised fine-tuning
(distcl.evaluation.finetune) on tiny betons."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from distcl.data.beton import read_meta
from distcl.evaluation import evaluate, probe


def _digits():
    """sklearn's 8x8 digits (1797 images, 64 features, 10 classes), a fixed 2:1 split."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(y))
    x, y = torch.tensor(x[order], dtype=torch.float32), torch.tensor(y[order])
    return x[:1200], y[:1200], x[1200:], y[1200:]


def _sklearn_probe(train_x, train_y, test_x, test_y, grid=probe.PROBE_L2) -> float:
    """The same protocol with scikit-learn's LogisticRegression: same features, same validation
    split, C = 1 / (2 * l2 * n) so both minimise the same objective."""
    from sklearn.linear_model import LogisticRegression

    head = probe.new_head(train_x, 10)
    z, zt = head.standardise(train_x).numpy(), head.standardise(test_x).numpy()
    y = train_y.numpy()
    val, tr = (i.numpy() for i in probe.val_split(len(z)))
    scores = {}
    for l2 in grid:
        clf = LogisticRegression(C=1 / (2 * l2 * len(tr)), max_iter=5000, tol=1e-8)
        scores[l2] = clf.fit(z[tr], y[tr]).score(z[val], y[val])
    best = max(scores, key=lambda l2: (scores[l2], l2))
    clf = LogisticRegression(C=1 / (2 * best * len(z)), max_iter=5000, tol=1e-8).fit(z, y)
    return float(clf.score(zt, test_y.numpy()))


def test_linear_probe_matches_sklearn_within_half_a_point():
    train_x, train_y, test_x, test_y = _digits()
    ours = probe.linear_probe(train_x, train_y, test_x, test_y)
    theirs = _sklearn_probe(train_x, train_y, test_x, test_y)
    assert ours.top1 > 0.9  # a probe that learned nothing would sit near 0.1
    assert abs(ours.top1 - theirs) <= 0.005, (ours, theirs)
    assert ours.top5 is not None and ours.top5 >= ours.top1
    assert ours.l2 in probe.PROBE_L2


def test_fixed_l2_fit_reaches_the_sklearn_optimum():
    from sklearn.linear_model import LogisticRegression

    train_x, train_y, test_x, test_y = _digits()
    head = probe.new_head(train_x, 10)
    z, zt = head.standardise(train_x), head.standardise(test_x)
    probe.fit_head(head, z, train_y, 1e-3, 60, probe.preconditioner(z))
    ours = probe.topk_accuracy(head.linear(zt).detach(), test_y, 1)
    clf = LogisticRegression(C=1 / (2 * 1e-3 * len(z)), max_iter=5000, tol=1e-8)
    theirs = clf.fit(z.numpy(), train_y.numpy()).score(zt.numpy(), test_y.numpy())
    assert abs(ours - theirs) <= 0.005
    np.testing.assert_allclose(
        head.linear.weight.detach().numpy(), clf.coef_ - clf.coef_.mean(0), atol=0.05
    )


def test_top5_only_with_more_than_five_classes():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 8, generator=g)
    y = (x[:, 0] > 0).long() + 2 * (x[:, 1] > 0).long()  # 4 classes, linearly separable-ish
    r = probe.linear_probe(x[:300], y[:300], x[300:], y[300:])
    assert r.top5 is None and r.top1 > 0.85


def test_knn_matches_naive_reference():
    g = torch.Generator().manual_seed(1)
    bank, test = torch.randn(60, 5, generator=g), torch.randn(25, 5, generator=g)
    by, ty = torch.randint(0, 3, (60,), generator=g), torch.randint(0, 3, (25,), generator=g)
    k, t = 7, 0.1
    correct = 0
    for q, label in zip(F.normalize(test, dim=1), ty, strict=True):
        sims = F.normalize(bank, dim=1) @ q
        votes = np.zeros(3)
        for j in sims.argsort(descending=True)[:k]:
            votes[by[j]] += float(torch.exp(sims[j] / t))
        correct += int(votes.argmax() == label)
    assert evaluate.knn_accuracy(bank, by, test, ty, k=k, t=t, chunk=10) == correct / 25


def test_knn_monitor_embeds_at_most_test_size_images(tiny_betons):
    torch.manual_seed(0)
    enc = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()
    )
    train, test = (
        str(tiny_betons / "fashion_mnist-train.beton"),
        str(tiny_betons / "fashion_mnist-test.beton"),
    )
    kw = {"channels": 1, "device": torch.device("cpu")}
    got = evaluate.knn_monitor(enc, train, test, k=5, bank_size=100, test_size=50, **kw)
    bx, by = evaluate.extract_features(enc, train, indices=np.arange(100), **kw)
    tx, ty = evaluate.extract_features(enc, test, indices=np.arange(50), **kw)
    assert got == evaluate.knn_accuracy(bx, by, tx, ty, k=5)
    assert read_meta(test)["count"] > 50  # so the cap actually cut the test set


def test_balanced_subset_is_fixed_balanced_and_hashed():
    labels = torch.tensor(np.repeat(np.arange(10), 600))  # 6000 labels, 600 per class
    one = evaluate.balanced_subset(labels, 0.01)
    assert len(one) == 60 and np.all(np.bincount(labels[one].numpy()) == 6)
    assert np.array_equal(one, evaluate.balanced_subset(labels, 0.01))  # seeded: same subset
    assert not np.array_equal(one, evaluate.balanced_subset(labels, 0.01, seed=1))
    ten = evaluate.balanced_subset(labels, 0.1)
    assert len(ten) == 600 and len(np.unique(ten)) == 600 and np.all(np.diff(ten) > 0)
    assert evaluate.subset_hash(one) == evaluate.subset_hash(one.copy())
    assert evaluate.subset_hash(one) != evaluate.subset_hash(ten)
    rare = torch.tensor([0] * 500 + [1] * 3)
    assert np.bincount(rare[evaluate.balanced_subset(rare, 0.01)].numpy()).tolist() == [5, 1]
    with pytest.raises(ValueError, match="label fraction must be in"):
        evaluate.balanced_subset(labels, 1.5)


def test_fine_tune_learns_from_a_few_labels(tiny_betons):
    from distcl.evaluation.finetune import fine_tune
    from distcl.models.encoders import SmallCNN

    torch.manual_seed(0)
    encoder = SmallCNN(1, 4)
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    train = str(tiny_betons / "fashion_mnist-train.beton")
    _, labels = evaluate.raw_pixels(train, 1)
    idx = evaluate.balanced_subset(labels, 0.05)
    r = fine_tune(
        encoder,
        train,
        str(tiny_betons / "fashion_mnist-test.beton"),
        idx,
        channels=1,
        classes=4,
        steps=30,
        batch_size=16,
        fraction=0.05,
    )
    assert r.n_labels == len(idx) and r.steps == 30 and r.top5 is None
    assert r.indices_sha256 == evaluate.subset_hash(idx)
    assert r.top1 > 0.5  # 4 balanced classes: chance is 0.25
    assert all(torch.equal(v, encoder.state_dict()[k]) for k, v in before.items())  # a copy
