"""The WordNet parser on a sample the test writes: every field, the gloss rules, the pairs, the
stable split, and errors that name the package, the file and the line."""

from __future__ import annotations

import pytest

from distcl.data.source_types import DataError
from distcl.data.wordnet import (
    LEXNAMES,
    ROOT_ENV,
    Synset,
    positive_pairs,
    read_wordnet,
    split_gloss,
    split_of,
)
from tests.text.wordnet_sample import EXPECTED, HEADER, LINES, write_sample


def test_every_field_of_every_synset(tmp_path):
    assert read_wordnet(write_sample(tmp_path)) == EXPECTED
    assert len(LEXNAMES) == 45 and LEXNAMES[5] == "noun.animal" and LEXNAMES[44] == "adj.ppl"
    assert [s.lexname for s in EXPECTED[:2]] == ["noun.Tops", "noun.animal"]


def test_root_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(ROOT_ENV, str(write_sample(tmp_path)))
    assert read_wordnet() == EXPECTED


@pytest.mark.parametrize(
    "gloss, definition, examples",
    [
        ("no examples at all  ", "no examples at all", ()),
        ('"only an example"', "", ("only an example",)),
        ('def; "one; still one"; "two"', "def", ("one; still one", "two")),
        ('def; "lost its quote; "next"', "def", ("lost its quote", "next")),
        ('def; "one", "two"', "def", ("one", "two")),
        ('def: "one": "two"', "def", ("one", "two")),
        ('def;"tight"', "def", ("tight",)),
        ('def (e.g., "in brackets")', 'def (e.g., "in brackets")', ()),
        ('as in the phrase "a b"; "ex"', 'as in the phrase "a b"', ("ex",)),
        ('def; "said"- An Author; "next"', "def", ("said", "next")),
        ('def; "it"--Book 1:2', "def", ("it",)),
        ('def; "he said "hi" to me"', "def", ('he said "hi" to me',)),
        ('def; "a" "b"', "def", ("a", "b")),
        ('def; "trailing";', "def", ("trailing",)),
        ('def; "unclosed at the end', "def", ("unclosed at the end",)),
    ],
)
def test_gloss_rules(gloss, definition, examples):
    assert split_gloss(gloss) == (definition, examples)


def test_positive_pairs():
    cat = EXPECTED[2]
    d, (e1, e2) = cat.definition, cat.examples
    assert positive_pairs(cat) == [(d, e1), (d, e2), (e1, e2)]
    assert positive_pairs(EXPECTED[0]) == []  # no examples: no pair
    twice = Synset("n1", 3, ("x",), "def", ("same", "same"))
    assert positive_pairs(twice) == [("def", "same"), ("def", "same")]  # no (same, same)


def test_split_is_stable_and_near_the_holdout():
    assert [split_of(s.id, 0.5) for s in EXPECTED[:3]] == ["train", "test", "test"]  # fixed hash
    ids = [f"n{i:08d}" for i in range(1000)]
    first = [split_of(i) for i in ids]
    assert first == [split_of(i) for i in ids]
    assert 60 <= first.count("test") <= 140
    assert {split_of(i, 0.0) for i in ids} == {"train"}
    with pytest.raises(DataError, match="holdout"):
        split_of("n1", 1.0)


def test_missing_files_name_the_debian_package(tmp_path, monkeypatch):
    monkeypatch.delenv(ROOT_ENV, raising=False)
    with pytest.raises(DataError) as err:
        read_wordnet(tmp_path / "nowhere")
    for part in ("wordnet-base", "apt-get install wordnet-base", ROOT_ENV, "data.noun"):
        assert part in str(err.value)
    root = write_sample(tmp_path / "wn")
    (root / "data.adv").unlink()
    with pytest.raises(DataError, match=r"missing data\.adv\)"):
        read_wordnet(root)


GOOD = LINES["noun"][0]


@pytest.mark.parametrize(
    "pos, bad, expected",
    [
        ("noun", GOOD.replace(" | ", " "), "' | '"),
        ("noun", GOOD.replace("00001740", "0001740"), "8-digit synset_offset, got '0001740'"),
        ("noun", GOOD.replace(" 03 n ", " 38 n "), "a noun.* lex_filenum"),
        ("noun", GOOD.replace(" 03 n ", " 03 v "), "ss_type n, got 'v'"),
        ("noun", GOOD.replace(" 000 |", " 001 |"), "pointer symbol, got the end"),
        ("noun", GOOD.replace(" 000 |", " 000 extra |"), "after the last pointer"),
        ("verb", LINES["verb"][1].replace(" 02 + 01 00", " 02 01 00"), "'+' before a verb"),
    ],
)
def test_corrupt_line_names_file_line_and_field(tmp_path, pos, bad, expected):
    lines = {**LINES, pos: [*LINES[pos], bad]}
    root = write_sample(tmp_path, lines)
    number = HEADER.count("\n") + len(lines[pos])
    with pytest.raises(DataError) as err:
        read_wordnet(root)
    message = str(err.value)
    assert f"{root / f'data.{pos}'}, line {number}" in message and expected in message


def test_non_utf8_line_is_reported(tmp_path):
    root = write_sample(tmp_path)
    with open(root / "data.adv", "ab") as f:
        f.write(b"00009999 02 r 01 caf\xe9 0 000 | bad byte  \n")
    with pytest.raises(DataError, match=r"data\.adv, line 5: .*UTF-8"):
        read_wordnet(root)
