"""WordNet text `.beton`s from the test's sample: records, round trip, sidecar, loader, reuse."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch

from distcl.data.source_types import DataError
from distcl.data.text_beton import (
    prepare_wordnet,
    read_text_beton,
    read_text_meta,
    split_records,
)
from distcl.data.text_loader import text_loader
from distcl.data.text_tokens import decode, truncate
from tests.text.wordnet_sample import EXPECTED, write_sample

MAX_LEN = 16  # shorter than some texts, so the cut is exercised
HOLDOUT = 0.5  # puts 4 of the 9 sample synsets in test


@pytest.fixture(scope="module")
def wn(tmp_path_factory):
    root = write_sample(tmp_path_factory.mktemp("wordnet"))
    out = tmp_path_factory.mktemp("betons")
    return root, out, prepare_wordnet(out, root, max_len=MAX_LEN, holdout=HOLDOUT)


def test_records_follow_the_documented_layout():
    dog, cat, move, quickly = (EXPECTED[i] for i in (1, 2, 5, 8))
    assert split_records(EXPECTED, "test", HOLDOUT) == [
        (dog.definition, dog.examples[0], 1, 5),
        (cat.definition, cat.examples[0], 2, 5),
        (cat.definition, cat.examples[1], 2, 5),
        (move.definition, move.definition, 5, 38),  # no examples: the definition twice
        (quickly.definition, quickly.examples[0], 8, 2),
        (quickly.definition, quickly.examples[1], 8, 2),
    ]
    train = split_records(EXPECTED, "train", HOLDOUT)
    assert Counter(r[2] for r in train) == {3: 1, 4: 3, 6: 1, 7: 1}  # entity: no pair


@pytest.mark.parametrize("split", ["train", "test"])
def test_round_trip_through_the_beton(wn, split):
    root, _, paths = wn
    records = split_records(EXPECTED, split, HOLDOUT)
    data = read_text_beton(paths[split])
    assert data["a"].shape == data["b"].shape == (len(records), MAX_LEN)
    assert [decode(r) for r in data["a"]] == [truncate(r[0], MAX_LEN) for r in records]
    assert [decode(r) for r in data["b"]] == [truncate(r[1], MAX_LEN) for r in records]
    assert data["synset"].tolist() == [r[2] for r in records]
    assert data["category"].tolist() == [r[3] for r in records]
    assert any(len(r[0]) > MAX_LEN for r in records)  # some text really was cut

    meta = json.loads(paths[split].with_name(paths[split].name + ".json").read_text())
    assert paths[split].name == f"wordnet_{split}.beton"
    assert {k: meta[k] for k in ("dataset", "split", "count", "max_len", "tokenizer")} == {
        "dataset": "wordnet", "split": split, "count": len(records), "max_len": MAX_LEN,
        "tokenizer": "bytes",
    }  # fmt: skip
    assert meta["source"] == str(root.resolve()) and meta["holdout"] == HOLDOUT


def _rows(a, b, synset, category) -> list[tuple]:
    """One hashable tuple per record: a's ids, b's ids, synset, category."""
    return [
        (*x.tolist(), *y.tolist(), s, c) for x, y, s, c in zip(a, b, synset, category, strict=True)
    ]


def test_loader_gives_every_record_once_per_epoch(wn):
    path = wn[2]["train"]
    everything = Counter(_rows(*read_text_beton(path).values()))
    loader = text_loader(path, 4, seed=3, shuffle=True, drop_last=False)
    for _ in range(2):
        seen = []
        for a, b, synset, category in loader:
            assert a.dtype == b.dtype == synset.dtype == category.dtype == torch.int64
            assert a.shape == b.shape == (len(synset), MAX_LEN) and category.shape == synset.shape
            seen += _rows(a.numpy(), b.numpy(), synset.tolist(), category.tolist())
        assert Counter(seen) == everything
    full = text_loader(path, 4, seed=3)  # drop_last: only whole batches
    assert len(full) == sum(everything.values()) // 4
    assert all(len(batch[0]) == 4 for batch in full)


def test_valid_files_are_reused_and_stale_ones_rewritten(wn):
    root, out, paths = wn
    mtimes = {s: p.stat().st_mtime_ns for s, p in paths.items()}
    assert prepare_wordnet(out, root, max_len=MAX_LEN, holdout=HOLDOUT) == paths
    assert {s: p.stat().st_mtime_ns for s, p in paths.items()} == mtimes

    other = out.parent / (out.name + "-other")
    first = prepare_wordnet(other, root, max_len=MAX_LEN, holdout=HOLDOUT)["test"]
    with open(first, "ab") as f:
        f.write(b"junk")
    with pytest.raises(DataError, match="bytes, written as"):
        read_text_meta(first)
    again = prepare_wordnet(other, root, max_len=MAX_LEN + 8, holdout=HOLDOUT)["test"]
    assert read_text_meta(again)["max_len"] == MAX_LEN + 8


def test_sharding_needs_the_process_group(wn):
    with pytest.raises(DataError, match="rank 0 of 1"):
        text_loader(wn[2]["train"], 2, rank=1, world=2)
    with pytest.raises(DataError, match="no records"):
        prepare_wordnet(wn[1] / "none", wn[0], holdout=0.0)
