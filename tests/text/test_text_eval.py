"""Text evaluation: recall@k against a naive reference, ties, chunking, the TF-IDF baseline,
embedding in eval mode, and the two probes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from distcl.evaluation.text_eval import (
    TIE_TOL,
    embed_texts,
    fit_tfidf,
    probe_accuracy,
    retrieval_recall,
    sparse_probe_accuracy,
    tfidf_embeddings,
)
from distcl.models.text import build_text_encoder

SENTENCES = [
    "the dog barked all night",
    "she plays the violin in an orchestra",
    "a cold wind blew from the north",
    "he repaired the engine of the old truck",
    "the river flooded the valley after the storm",
    "they planted tomatoes and beans in the garden",
    "the committee approved the new budget",
    "a bright comet crossed the evening sky",
]


def _naive_ranks(queries: list[list[float]], keys: list[list[float]], target: list[int]):
    """Rank of each query's correct key by cosine, ties counted against it, entry by entry."""

    def cos(u, v):
        dot = sum(a * b for a, b in zip(u, v, strict=True))
        return dot / math.sqrt(sum(a * a for a in u) * sum(b * b for b in v))

    ranks = []
    for q, t in zip(queries, target, strict=True):
        s = [cos(q, k) for k in keys]
        ranks.append(1 + sum(1 for j, x in enumerate(s) if j != t and x >= s[t]))
    return ranks


def _planted(seed: int = 0, n_keys: int = 60, n_queries: int = 90, dim: int = 8):
    """Random keys; each query is its key plus noise of a random size (some far, some near)."""
    gen = torch.Generator().manual_seed(seed)
    keys = torch.randn(n_keys, dim, generator=gen)
    target = torch.randint(0, n_keys, (n_queries,), generator=gen)
    noise = torch.rand(n_queries, 1, generator=gen) * 3.0
    queries = keys[target] + noise * torch.randn(n_queries, dim, generator=gen)
    return queries, keys, target


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_recall_matches_the_naive_reference(seed):
    queries, keys, target = _planted(seed)
    ranks = _naive_ranks(queries.double().tolist(), keys.double().tolist(), target.tolist())
    ks = (1, 3, 10, 60)
    got = retrieval_recall(queries, keys, target, ks=ks)
    want = {f"recall@{k}": sum(r <= k for r in ranks) / len(ranks) for k in ks}
    assert got == pytest.approx(want, abs=1e-12)
    assert 0 < got["recall@1"] < got["recall@10"] < 1 and got["recall@60"] == 1.0


def test_scale_of_the_embeddings_does_not_matter():
    queries, keys, target = _planted(3)
    scaled = retrieval_recall(queries * 7.0, keys * (torch.rand(len(keys), 1) + 0.1), target)
    assert scaled == retrieval_recall(queries, keys, target)


def test_ties_count_against_the_query():
    keys = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    queries = torch.tensor([[2.0, 0.0], [1.0, 0.0], [0.0, 3.0], [0.6, 0.8]])
    # query 0 and 1 point at keys 0 and 1, which are the same vector: each ranks 2nd.
    # query 2 has a unique best key; query 3 equals key 3 (a wrong key scores 0.8 < 1).
    got = retrieval_recall(queries, keys, [0, 1, 2, 3], ks=(1, 2))
    assert got == {"recall@1": 0.5, "recall@2": 1.0}
    # a wrong key a hair below the correct one (within TIE_TOL) is a tie too
    near = torch.tensor([[1.0, 0.0], [1.0, TIE_TOL / 10]])
    assert retrieval_recall(near[:1], near, [0], ks=(1,)) == {"recall@1": 0.0}


@pytest.mark.parametrize("chunk", [1, 7, 32, 10_000])
def test_chunking_gives_the_unchunked_result(chunk):
    queries, keys, target = _planted(4, n_keys=200, n_queries=150)
    whole = retrieval_recall(queries, keys, target, ks=(1, 5, 10), chunk=len(queries))
    assert retrieval_recall(queries, keys, target, ks=(1, 5, 10), chunk=chunk) == whole


def test_bad_query_to_key_is_refused():
    queries, keys, _ = _planted(5, n_keys=4, n_queries=3)
    with pytest.raises(ValueError, match="2 entries for 3 queries"):
        retrieval_recall(queries, keys, [0, 1])
    with pytest.raises(ValueError, match="must index the 4 keys"):
        retrieval_recall(queries, keys, [0, 1, 4])


@pytest.mark.parametrize("kind", ["word", "char"])
def test_tfidf_finds_exact_duplicates_at_rank_1(kind):
    order = np.random.default_rng(0).permutation(len(SENTENCES))
    queries = [SENTENCES[i] for i in order]
    vectors = tfidf_embeddings(SENTENCES, queries + SENTENCES, kind)
    assert sp.issparse(vectors)
    norms = np.sqrt(np.asarray(vectors.multiply(vectors).sum(axis=1))).ravel()
    np.testing.assert_allclose(norms, 1.0, rtol=1e-6)
    q, k = vectors[: len(queries)], vectors[len(queries) :]
    assert retrieval_recall(q, k, order, ks=(1,)) == {"recall@1": 1.0}
    # sparse rows and their dense copy rank the same
    dense = torch.from_numpy(vectors.toarray())
    assert retrieval_recall(dense[: len(queries)], dense[len(queries) :], order) == (
        retrieval_recall(q, k, order)
    )


def test_tfidf_is_fitted_on_the_training_texts_only():
    vec = fit_tfidf(["a cat sat", "a dog ran"], "word")
    assert "zebra" not in vec.vocabulary_
    rows = tfidf_embeddings(["a cat sat", "a dog ran"], ["zebra zebra", "cat"], "word")
    assert rows[0].nnz == 0 and rows[1].nnz == 1
    with pytest.raises(ValueError, match="TF-IDF kind must be one of word, char"):
        fit_tfidf(["a"], "bpe")


def test_embed_texts_runs_in_eval_mode_and_restores_the_mode():
    torch.manual_seed(0)
    enc = build_text_encoder(width=32, layers=1, heads=4, max_len=30, dropout=0.3)
    ids = torch.randint(1, 257, (11, 30))
    ids[:, 20:] = 0  # every text ends by 20 tokens: batches get trimmed
    ids[3] = 0
    got = embed_texts(enc, ids, batch=4, device="cpu")
    assert enc.training and got.dtype == torch.float32 and got.shape == (11, 32)
    enc.eval()
    with torch.no_grad():
        want = enc(ids)
    assert (got - want).abs().max().item() <= 1e-5
    assert not got.requires_grad


def test_dense_probe_separates_clusters():
    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 16, generator=gen) * 3
    y = torch.randint(0, 3, (300,), generator=gen)
    x = centres[y] + torch.randn(300, 16, generator=gen)
    assert probe_accuracy(x[:200], y[:200], x[200:], y[200:]) > 0.9


def test_sparse_probe_on_tfidf_separates_topics():
    animals = ["the dog barked", "a cat purred", "the horse ran", "a cow grazed", "the dog ran"]
    machines = ["the engine stalled", "a truck braked", "the motor hummed", "a car stalled"]
    texts = [*animals, *machines] * 3
    labels = [0] * len(animals) + [1] * len(machines)
    y = labels * 3
    test = ["the cat ran", "the truck stalled", "a horse grazed", "the engine hummed"]
    x = tfidf_embeddings(texts, texts, "word")
    xt = tfidf_embeddings(texts, test, "word")
    assert sparse_probe_accuracy(x, y, xt, [0, 1, 0, 1]) == 1.0
