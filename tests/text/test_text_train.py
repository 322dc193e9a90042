"""A tiny text run end to end: `distcl train` on a generated WordNet through Ray Train (two
gloo workers, gathered negatives), then the retrieval and probe evaluation with its baselines,
all logged to MLflow."""

from __future__ import annotations

from pathlib import Path

import pytest

from distcl.config import schema as config
from distcl.tracking import core as tracking
from tests.text.wordnet_sample import write_sample

WORDS = "river stone cloud apple engine violin garden letter bridge candle".split()
VERBS = "carry paint follow build open".split()


def synthetic_wordnet(root: Path, n: int = 240) -> Path:
    """`n` noun and verb synsets in 6 categories, each with a definition and two examples
    that name its lemma, so a held-out split and every record kind exist."""
    lines: dict[str, list[str]] = {"noun": [], "verb": [], "adj": [], "adv": []}
    for i in range(n):
        pos, words = ("noun", WORDS) if i % 2 else ("verb", VERBS)
        lemma = f"{words[i % len(words)]}{i}"
        lex = 5 + i % 3 if pos == "noun" else 29 + i % 3
        definition = f"a kind of {words[(i + 3) % len(words)]} used with {lemma}"
        examples = f'"the {lemma} was near"; "we saw {lemma} {words[i % 4]} today"'
        frames = " 01 + 01 00" if pos == "verb" else ""  # verbs list their sentence frames
        head = f"{10000 + i:08d} {lex:02d} {pos[0]} 01 {lemma} 0 000{frames}"
        lines[pos].append(f"{head} | {definition}; {examples}  ")
    return write_sample(root, lines)


@pytest.mark.slow
def test_a_tiny_text_run_trains_and_is_evaluated_by_retrieval(ray_session, tmp_path):
    from distcl.job.driver import fit

    root = synthetic_wordnet(tmp_path / "wordnet")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = config.load(
        "wordnet_simcse",
        [
            f"data.root={root}",
            f"data.beton_dir={tmp_path / 'betons'}",
            "model.width=32",
            "model.blocks=1",
            "model.proj_hidden=32",
            "model.proj_dim=16",
            "train.global_batch=32",
            "train.epochs=2",
            "train.time_budget_s=0",
            "eval.tsne_points=50",
            f"train.storage_path={tmp_path / 'runs'}",
            f"tracking.uri={uri}",
            "tracking.system_metrics=false",
        ],
    )
    summary = fit(cfg)
    for who in (summary, *summary["baselines"].values()):
        assert 0.0 <= who["recall_at_1"] <= who["recall_at_10"] <= 1.0
        assert 0.0 <= who["linear_acc"] <= 1.0
    assert set(summary["baselines"]) == {"tfidf", "random_init"}
    assert summary["baselines"]["tfidf"]["recall_at_1"] > 0.5  # examples name the lemma
    run = tracking.get_run(uri, summary["mlflow_run_id"])
    for key in ("recall_at_1", "recall_at_10", "linear_acc", "tfidf_recall_at_1"):
        assert key in run.data.metrics, key
    logger = tracking.RunLogger(uri, run.info.run_id)
    assert [s for s, _ in sorted(logger.metric_history("loss"))] == [1, 2]
    monitor = sorted(logger.metric_history("recall_at_1"))  # the last epoch's text monitor
    assert monitor and all(0.0 <= v <= 1.0 for _, v in monitor)
    assert run.data.tags["arch"] == "text_transformer-w32-l1"


def test_a_text_batch_gives_its_pair_or_its_first_text_twice():
    import torch

    from distcl.train.worker import batch_on_device

    a, b = torch.ones(2, 4, dtype=torch.long), torch.full((2, 4), 2)
    synset, category = torch.tensor([7, 9]), torch.tensor([3, 4])
    cpu, text = torch.device("cpu"), {"modality": "text"}
    views, labels = batch_on_device((a, b, synset, category), text, cpu)
    assert torch.equal(views[0], a) and torch.equal(views[1], b)
    assert torch.equal(labels, synset)  # SupCon's positives: the records of one synset
    views, _ = batch_on_device((a, b, synset, category), text, cpu, "dropout")
    assert torch.equal(views[0], a) and torch.equal(views[1], a)  # SimCSE: dropout tells them apart
