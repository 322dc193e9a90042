"""A tiny WordNet in the wndb(5WN) format, written by the tests: a licence header and a few
synset lines per data file, with glosses of 0, 1 and 2 examples, a ";" inside an example,
examples after "," and ":", an attribution after an example, and a quote in a definition."""

from __future__ import annotations

from pathlib import Path

from distcl.data.wordnet import Synset

HEADER = (
    "  1 This software and database is being provided to you, the LICENSEE, by  \n"
    "  2 a university under a licence; the lines of this header start with two spaces.  \n"
    "  3   \n"
)
LINES = {
    "noun": [
        "00001740 03 n 01 entity 0 000 | that which is perceived or known to exist  ",
        "00002000 05 n 02 dog 0 domestic_dog 0 001 @ 00001740 n 0000 | a domesticated canid;"
        ' "the dog barked all night"  ',
        "00003000 05 n 01 cat 0 002 @ 00001740 n 0000 ~ 00002000 n 0000 | a small feline;"
        ' "the cat sat; then it slept"; "cats purr"  ',
        "00004000 13 n 01 bread 0 000 | food baked from dough (as in the phrase"
        ' "bread and butter"): "fresh bread smells good"  ',
    ],
    "verb": [
        "00005000 38 v 01 run 0 001 @ 00006001 v 0000 01 + 02 00 | move fast on foot;"
        ' "don\'t run in the hall"; "the children ran to the shop"- A. Teacher  ',
        "00006001 38 v 02 move 0 go 1 000 02 + 01 00 + 02 01 | change location  ",
    ],
    "adj": [
        '00007000 00 a 01 long(a) 0 000 | of great duration; "a long life"  ',
        '00008000 00 s 01 lengthy 0 000 | too long, "a lengthy speech"  ',
    ],
    "adv": [
        '00009000 02 r 01 quickly 0 000 | with speed; "she answered quickly"; "he ran quickly"  ',
    ],
}
EXPECTED = [
    Synset("n00001740", 3, ("entity",), "that which is perceived or known to exist", ()),
    Synset(
        "n00002000", 5, ("dog", "domestic dog"), "a domesticated canid",
        ("the dog barked all night",),
    ),
    Synset(
        "n00003000", 5, ("cat",), "a small feline", ("the cat sat; then it slept", "cats purr")
    ),
    Synset(
        "n00004000", 13, ("bread",),
        'food baked from dough (as in the phrase "bread and butter")',
        ("fresh bread smells good",),
    ),
    Synset(
        "v00005000", 38, ("run",), "move fast on foot",
        ("don't run in the hall", "the children ran to the shop"),
    ),
    Synset("v00006001", 38, ("move", "go"), "change location", ()),
    Synset("a00007000", 0, ("long",), "of great duration", ("a long life",)),
    Synset("s00008000", 0, ("lengthy",), "too long", ("a lengthy speech",)),
    Synset(
        "r00009000", 2, ("quickly",), "with speed", ("she answered quickly", "he ran quickly")
    ),
]  # fmt: skip


def write_sample(root: Path, lines: dict[str, list[str]] | None = None) -> Path:
    """Write data.noun/verb/adj/adv under `root` (created); returns `root`."""
    root.mkdir(parents=True, exist_ok=True)
    for pos, body in (lines or LINES).items():
        (root / f"data.{pos}").write_text(HEADER + "".join(line + "\n" for line in body))
    return root
