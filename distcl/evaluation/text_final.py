"""The final evaluation of a text run: held-out gloss retrieval and the category probe, with
the TF-IDF and random-init baselines.

Both tasks use only synsets the run never trained on (the test split, by synset):
- retrieval: each example sentence of a held-out synset is a query; the keys are the
  definitions of all held-out synsets; `recall_at_1` and `recall_at_10` are the fractions of
  queries whose own definition ranks first, or in the top 10, by cosine similarity;
- the probe: the lexicographer category (45 classes, e.g. noun.animal) of a definition, learnt
  on the training synsets' definitions (those with examples: the train split's records) and
  scored on the held-out definitions: `knn_acc` and `linear_acc` with the image runs' probes
  (distcl.evaluation.probe).

Baselines, each an MLflow run tagged `role=baseline` and computed once per data and protocol
(distcl.evaluation.baselines): `tfidf` (character n-grams fitted on the training texts; its
probe is scikit-learn's logistic regression on the sparse rows, as the image probe needs dense
features) and `random_init` (the same encoder, seeded like training, untrained).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from distcl.config.schema import Config
from distcl.data.text_beton import read_text_beton, read_text_meta
from distcl.data.text_tokens import decode
from distcl.evaluation import baselines, record
from distcl.evaluation.evaluate import stage
from distcl.evaluation.probe import frozen_metrics
from distcl.evaluation.text_eval import (
    TFIDF_KIND,
    embed_texts,
    retrieval_recall,
    sparse_probe_accuracy,
    tfidf_embeddings,
)
from distcl.models.encoders import encoder_from_config
from distcl.tracking import core as tracking
from distcl.tracking import review as tracking_review

PROTOCOL = 1  # version of the text evaluation behind cached baseline figures
EMBED_BATCH = 512


def _first_rows(records: dict[str, np.ndarray]) -> np.ndarray:
    """The index of each synset's first record, in synset order: its definition is that
    record's `a` (text_beton: a synset's definition pairs come first)."""
    _, first = np.unique(records["synset"], return_index=True)
    return first


def eval_sets(data: dict[str, Any]) -> dict[str, Any]:
    """Token ids and labels of the two tasks, from the run's `.beton`s."""
    train, test = read_text_beton(data["train_eval_path"]), read_text_beton(data["test_path"])
    tr, te = _first_rows(train), _first_rows(test)
    is_query = (test["a"] != test["b"]).any(axis=1)  # a definition-example record
    key_of_synset = {s: i for i, s in enumerate(test["synset"][te])}
    ids = lambda x: torch.from_numpy(x.astype(np.int64))  # noqa: E731
    return {
        "probe_train": ids(train["a"][tr]),
        "probe_train_y": torch.from_numpy(train["category"][tr]),
        "keys": ids(test["a"][te]),
        "keys_y": torch.from_numpy(test["category"][te]),
        "queries": ids(test["b"][is_query]),
        "query_to_key": torch.tensor([key_of_synset[s] for s in test["synset"][is_query]]),
    }


def encoder_metrics(cfg: Config, encoder: torch.nn.Module, sets: dict[str, Any]) -> dict:
    """Retrieval and probe figures of `encoder` (trained or not) on the held-out synsets."""
    return encoder_features_and_metrics(cfg, encoder, sets)[1]


def encoder_features_and_metrics(
    cfg: Config, encoder: torch.nn.Module, sets: dict[str, Any]
) -> tuple[torch.Tensor, dict[str, float]]:
    """(held-out definition features, figures) of `encoder`."""
    feats = {
        k: embed_texts(encoder, sets[k], EMBED_BATCH, torch.device("cpu"))
        for k in ("probe_train", "keys", "queries")
    }
    out = _recall(feats["queries"], feats["keys"], sets["query_to_key"])
    out.update(
        frozen_metrics(
            feats["probe_train"],
            sets["probe_train_y"],
            feats["keys"],
            sets["keys_y"],
            cfg.eval.knn_k,
            cfg.eval.probe,
        )  # fmt: skip
    )
    return feats["keys"], out


def _recall(queries, keys, query_to_key) -> dict[str, float]:
    found = retrieval_recall(queries, keys, query_to_key, ks=(1, 10))
    return {f"recall_at_{k.split('@')[1]}": v for k, v in found.items()}


def tfidf_metrics(sets: dict[str, Any]) -> dict[str, float]:
    """TF-IDF rows fitted on the training definitions: retrieval and a sparse probe."""
    texts = {
        k: [decode(row) for row in sets[k].numpy()] for k in ("probe_train", "keys", "queries")
    }
    fit_on = texts["probe_train"]
    rows = {k: tfidf_embeddings(fit_on, v) for k, v in texts.items()}
    out = _recall(rows["queries"], rows["keys"], sets["query_to_key"])
    out["linear_acc"] = sparse_probe_accuracy(
        rows["probe_train"], sets["probe_train_y"], rows["keys"], sets["keys_y"]
    )
    return out


def text_monitor(
    encoder: torch.nn.Module,
    bank_path: str,
    test_path: str,
    *,
    k: int,
    device,
    bank_size: int,
    use_bf16: bool = False,
) -> dict[str, float]:
    """A text run's per-epoch figures, its counterpart of the image kNN monitor, on every rank:
    `knn_acc` (the categories of the held-out definitions, voted by the first `bank_size`
    training definitions; 0 = all) and `recall_at_1` (held-out retrieval). Each rank embeds
    every world-th text; the features are gathered back into order."""
    from distcl.evaluation.probe import knn_accuracy
    from distcl.runtime import dist

    sets = eval_sets({"train_eval_path": bank_path, "test_path": test_path})
    rank, world = dist.get_rank(), dist.get_world_size()

    def embed(ids: torch.Tensor) -> torch.Tensor:
        share = -(-len(ids) // world)  # rows per rank, the last ranks padded with row 0
        mine = ids[rank::world]
        mine = torch.cat([mine, ids[:1].expand(share - len(mine), -1)])
        f = embed_texts(encoder, mine, EMBED_BATCH, device, use_bf16).to(device)
        every = dist.gather_no_grad(f).cpu().view(world, share, -1)
        out = torch.empty(len(ids), every.shape[-1])
        for r in range(world):
            out[r::world] = every[r, : len(ids[r::world])]
        return out

    bank = sets["probe_train"][: bank_size or None]
    keys, queries = embed(sets["keys"]), embed(sets["queries"])
    knn = knn_accuracy(embed(bank), sets["probe_train_y"][: len(bank)], keys, sets["keys_y"], k=k)
    return {
        "knn_acc": knn,
        "recall_at_1": _recall(queries, keys, sets["query_to_key"])["recall_at_1"],
    }


def _key(cfg: Config, data: dict[str, Any], **extra: Any) -> dict[str, Any]:
    key: dict[str, Any] = {"protocol": PROTOCOL, "knn_k": cfg.eval.knn_k, **extra}
    for role in ("train_eval_path", "test_path"):
        meta = read_text_meta(data[role])
        key[role] = {k: meta.get(k) for k in ("dataset", "split", "count", "bytes", "max_len")}
    return key


def text_baselines(cfg: Config, data: dict, sets: dict, uri: str, experiment: str) -> list:
    """TF-IDF and the random-init encoder, reused from MLflow or the disk cache when there."""
    split = baselines.split_tags(data)
    tfidf = baselines.ensure(
        "tfidf", {"dataset": cfg.data.dataset, "arch": f"tfidf-{TFIDF_KIND}", **split}, data,
        _key(cfg, data, tfidf=TFIDF_KIND),
        lambda: tfidf_metrics(sets), uri, experiment,
    )  # fmt: skip

    def random_encoder() -> dict[str, float]:
        torch.manual_seed(cfg.train.seed)  # the loop seeds the same way before building
        return encoder_metrics(cfg, encoder_from_config(cfg.model, 0), sets)

    arch = baselines.arch_key(cfg)
    tags = {"dataset": cfg.data.dataset, "arch": arch, "seed": str(cfg.train.seed), **split}
    key = _key(cfg, data, arch=arch, seed=cfg.train.seed)
    rand = baselines.ensure("random_init", tags, data, key, random_encoder, uri, experiment)
    return [tfidf, rand]


def text_final_evaluation(
    cfg: Config, encoder: torch.nn.Module, data: dict, logger, trained: float
) -> dict[str, Any]:
    """Retrieval and probe figures of the trained text encoder and its baselines, logged to the
    run (metrics at the last epoch's step, tags that find the baselines, plots, the encoder
    model, the description and the registry version); `trained`: the epochs trained."""
    with stage("held-out synsets: token ids from the .betons"):
        sets = eval_sets(data)
    with stage("retrieval and category probe of the trained encoder"):
        keys_x, out = encoder_features_and_metrics(cfg, encoder.eval(), sets)
    out["epochs_trained"] = trained
    if cfg.eval.baselines:
        uri = logger.uri if logger is not None else ""
        with stage("baselines: TF-IDF and the random-init encoder (once, then reused)"):
            found = text_baselines(cfg, data, sets, uri, tracking.experiment_name(cfg))
        out["baselines"] = {b.name: b.metrics for b in found}
        out["baseline_kinds"] = {b.name: b.kind for b in found}
    if logger is not None:
        logger.set_tags({"arch": baselines.arch_key(cfg), **baselines.split_tags(data)})
        record.log_results(cfg, out, logger)
        with stage("plots and the encoder model to MLflow"):
            tracking.log_figure(logger, record.curves_figure(logger), "plots/curves.png")
            if cfg.eval.tsne_points > 0:
                fig = record.tsne_figure(
                    keys_x, sets["keys_y"], cfg.eval.tsne_points, cfg.train.seed
                )
                tracking.log_figure(logger, fig, "plots/tsne.png")
            if cfg.tracking.log_model:
                tracking.log_encoder(logger, encoder.eval(), sets["keys"][:2].numpy())
        tracking_review.finish_review(logger, cfg, out)
    return out
