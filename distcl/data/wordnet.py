"""WordNet 3.0 synsets read from Debian's `wordnet-base` files, for a text modality.

The four data files (`data.noun`, `data.verb`, `data.adj`, `data.adv`) hold one synset per line
in the wndb(5WN) format: `offset lex_filenum ss_type w_cnt word lex_id ... p_cnt ptr ...
[frames] | gloss`. The parser here is our own and checks every field, so a damaged file fails
with the file, the line number and what was expected. Lines that start with two spaces are the
licence header and are skipped.

A gloss is a definition followed by example sentences in double quotes, usually separated by
"; ". The files are hand-edited, and 959 of the 117,659 glosses of WordNet 3.0 bend that rule
(examples after ":" or ",", a missing or extra quote, a ";" inside an example, an attribution
such as `"..." - Shakespeare`); `split_gloss` documents how each is read.

Positive pairs for contrastive training (`positive_pairs`): (definition, example) for every
example, and (example_i, example_j) for every two examples of one synset. Both sides of a pair
describe one meaning in different words, which is the invariance the encoder should learn; a
synset without examples gives no pair (a definition paired with itself teaches nothing).

Train/test is split by synset (`split_of`), from a SHA-256 hash of the synset id, so a synset's
definition and examples never straddle the split, and the split is the same on every machine,
Python version and run (Python's `hash` of a str is salted per process).
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from distcl.data.source_types import DataError

DEFAULT_ROOT = "/usr/share/wordnet"  # where Debian's wordnet-base puts the files
ROOT_ENV = "DISTCL_WORDNET_DIR"  # overrides DEFAULT_ROOT
# data file -> the ss_type letters it may hold (s: adjective satellite)
DATA_FILES = {"noun": "n", "verb": "v", "adj": "as", "adv": "r"}

# lexnames(5WN): lexicographer file number -> name. Debian ships no `lexnames` file.
LEXNAMES = (
    "adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal",
    "noun.artifact", "noun.attribute", "noun.body", "noun.cognition", "noun.communication",
    "noun.event", "noun.feeling", "noun.food", "noun.group", "noun.location", "noun.motive",
    "noun.object", "noun.person", "noun.phenomenon", "noun.plant", "noun.possession",
    "noun.process", "noun.quantity", "noun.relation", "noun.shape", "noun.state",
    "noun.substance", "noun.time", "verb.body", "verb.change", "verb.cognition",
    "verb.communication", "verb.competition", "verb.consumption", "verb.contact",
    "verb.creation", "verb.emotion", "verb.motion", "verb.perception", "verb.possession",
    "verb.social", "verb.stative", "verb.weather", "adj.ppl",
)  # fmt: skip

_ADJ_MARKER = re.compile(r"\((?:a|p|ip)\)$")  # syntactic marker after an adjective


@dataclass(frozen=True)
class Synset:
    """One WordNet synset with its gloss split into definition and examples."""

    id: str  # ss_type + 8-digit offset in its data file, e.g. "n02084071" (ss_type s: satellite)
    category: int  # lex_filenum 0..44, an index into LEXNAMES (e.g. 5 = "noun.animal")
    words: tuple[str, ...]  # lemmas as written, "_" -> " ", adjective markers "(a)" removed
    definition: str  # the gloss before its examples ("" when the gloss has only examples)
    examples: tuple[str, ...]  # quoted example sentences, quotes and attributions removed

    @property
    def lexname(self) -> str:
        """The lexicographer file, e.g. "noun.animal"."""
        return LEXNAMES[self.category]


def wordnet_root(root: str | os.PathLike | None = None) -> Path:
    """`root`, else $DISTCL_WORDNET_DIR, else /usr/share/wordnet; DataError if files are missing."""
    path = Path(root or os.environ.get(ROOT_ENV) or DEFAULT_ROOT)
    missing = [f"data.{pos}" for pos in DATA_FILES if not (path / f"data.{pos}").is_file()]
    if missing:
        raise DataError(
            f"WordNet data files not found in {path} (missing {', '.join(missing)}). Install "
            f"Debian's package wordnet-base (apt-get install wordnet-base), which puts them in "
            f"{DEFAULT_ROOT}, or point {ROOT_ENV} (or root=) at a folder holding "
            f"data.noun, data.verb, data.adj and data.adv."
        )
    return path


def read_wordnet(root: str | os.PathLike | None = None) -> list[Synset]:
    """Every synset of the four data files, in file order: noun, verb, adj, adv."""
    path = wordnet_root(root)
    return [s for pos in DATA_FILES for s in read_data_file(path / f"data.{pos}")]


def read_data_file(path: str | os.PathLike) -> list[Synset]:
    """The synsets of one `data.POS` file; DataError naming file and line on a corrupt line."""
    path = Path(path)
    pos = path.name.removeprefix("data.")
    if pos not in DATA_FILES:
        raise DataError(f"{path} is not a WordNet data file (data.noun/verb/adj/adv)")
    synsets = []
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            if raw.startswith(b"  "):  # licence header: two spaces and a line number
                continue
            try:
                synsets.append(parse_line(raw.decode("utf-8"), pos))
            except (_Corrupt, UnicodeDecodeError) as exc:
                what = exc if isinstance(exc, _Corrupt) else "UTF-8 text"
                raise DataError(
                    f"{path}, line {number}: corrupt WordNet synset line: expected {what}. "
                    f"Reinstall the files (apt-get install --reinstall wordnet-base) or fix "
                    f"the line; the format is in `man 5 wndb`."
                ) from None
    return synsets


class _Corrupt(ValueError):
    """What a data line should have held where it did not (the caller adds file and line)."""


class _Fields:
    """A cursor over the space-separated fields before the gloss."""

    def __init__(self, text: str):
        self.items, self.i = text.split(), 0

    def take(self, what: str, pattern: str) -> str:
        if self.i >= len(self.items):
            raise _Corrupt(f"{what}, got the end of the fields before ' | '")
        item = self.items[self.i]
        if not re.fullmatch(pattern, item):
            raise _Corrupt(f"{what}, got {item!r}")
        self.i += 1
        return item


def parse_line(line: str, pos: str) -> Synset:
    """One synset line of `data.POS` (pos: noun, verb, adj or adv); raises _Corrupt."""
    head, bar, gloss = line.rstrip("\r\n").partition(" | ")
    if not bar:
        raise _Corrupt("' | ' between the fields and the gloss")
    f = _Fields(head)
    offset = f.take("an 8-digit synset_offset", r"\d{8}")
    category = int(f.take("a 2-digit lex_filenum", r"\d{2}"))
    if category >= len(LEXNAMES) or not LEXNAMES[category].startswith(pos + "."):
        raise _Corrupt(f"a {pos}.* lex_filenum (see man 5 lexnames), got {category:02d}")
    ss_type = f.take(f"ss_type {' or '.join(DATA_FILES[pos])}", f"[{DATA_FILES[pos]}]")
    words = []
    for _ in range(int(f.take("a 2-digit hex w_cnt", r"[0-9a-fA-F]{2}"), 16)):
        word = f.take("a word", r"\S+")
        f.take(f"a 1-digit hex lex_id after {word!r}", r"[0-9a-fA-F]")
        words.append(_ADJ_MARKER.sub("", word).replace("_", " "))
    for _ in range(int(f.take("a 3-digit p_cnt", r"\d{3}"))):
        f.take("a pointer symbol", r"\S{1,2}")
        f.take("a pointer's 8-digit synset_offset", r"\d{8}")
        f.take("a pointer's pos (n, v, a, s or r)", r"[nvasr]")
        f.take("a pointer's 4-digit hex source/target", r"[0-9a-fA-F]{4}")
    if pos == "verb":
        for _ in range(int(f.take("a 2-digit f_cnt (verb frames)", r"\d{2}"))):
            f.take("'+' before a verb frame", r"\+")
            f.take("a 2-digit frame number", r"\d{2}")
            f.take("a 2-digit hex word number", r"[0-9a-fA-F]{2}")
    if f.i != len(f.items):
        raise _Corrupt(f"' | ' after the last pointer, got {f.items[f.i]!r}")
    definition, examples = split_gloss(gloss)
    return Synset(f"{ss_type}{offset}", category, tuple(words), definition, examples)


def split_gloss(gloss: str) -> tuple[str, tuple[str, ...]]:
    """`definition; "example one"; "example two"` -> (definition, examples).

    Examples start at the first double quote that opens the gloss or follows ";", ":" or ","
    outside parentheses (so `(e.g., "...")` and `the phrase "make strides"` stay in the
    definition). From there, examples are separated by ";" outside quotes, by ";" anywhere when
    a quote follows (an example that lost its closing quote), by "," or ":" outside quotes when
    a quote follows, and by a closing quote followed by another quote. Each example loses its
    outer quotes and an attribution after its closing quote (`"..."- Shakespeare`); a ";"
    inside an example is kept, so is an unmatched quote inside it (`"I"m siding against..."`).
    """
    gloss = gloss.strip()
    start = _examples_start(gloss)
    if start < 0:
        return gloss.rstrip(" ;"), ()
    definition = gloss[:start].strip().rstrip(";:,").strip()
    pieces = (_unquote(p) for p in _example_pieces(gloss[start:]))
    return definition, tuple(p for p in pieces if p)


def _examples_start(gloss: str) -> int:
    """Index of the quote opening the first example, or -1."""
    depth = 0
    for i, c in enumerate(gloss):
        depth += (c == "(") - (c == ")")
        if c == '"' and depth <= 0:
            before = gloss[:i].rstrip()
            if not before or before[-1] in ";:,":
                return i
    return -1


def _example_pieces(text: str) -> list[str]:
    """Split the examples part of a gloss (it starts with a quote) at example boundaries."""
    pieces, start, inside = [], 0, False
    for i, c in enumerate(text):
        quote_next = c in '";,:' and text[i + 1 :].lstrip().startswith('"')
        if c == '"':
            if inside and quote_next and text[i + 1 : i + 2].isspace():  # "a" "b"
                pieces.append(text[start : i + 1])
                start, inside = i + 1, False
            else:
                inside = not inside
        elif (c == ";" and (not inside or quote_next)) or (c in ",:" and not inside and quote_next):
            pieces.append(text[start:i])
            start, inside = i + 1, False
    pieces.append(text[start:])
    return pieces


_CLOSING = re.compile(r'"\s*(?:-+[^"]*)?$')  # closing quote, maybe "- Author" after it


def _unquote(piece: str) -> str:
    text = piece.strip().lstrip('"')
    m = _CLOSING.search(text)
    return (text[: m.start()] if m else text).strip()


def split_of(synset_id: str, holdout: float = 0.1) -> str:
    """The split of a synset: "test" for about `holdout` of all ids, else "train".

    The same id gets the same split on every machine, Python version and run.
    """
    if not 0.0 <= holdout < 1.0:
        raise DataError(f"holdout must be in [0, 1), got {holdout} (try 0.1)")
    digest = hashlib.sha256(synset_id.encode("utf-8")).digest()
    u = int.from_bytes(digest[:8], "big") / 2.0**64  # uniform in [0, 1)
    return "test" if u < holdout else "train"


def positive_pairs(synset: Synset) -> list[tuple[str, str]]:
    """(definition, example) per example, then (example_i, example_j) for i < j.

    Pairs of two equal texts are left out; so is the definition when it is empty.
    """
    ex = synset.examples
    pairs = [(synset.definition, e) for e in ex if synset.definition]
    pairs += [(ex[i], ex[j]) for i in range(len(ex)) for j in range(i + 1, len(ex))]
    return [(a, b) for a, b in pairs if a != b]
