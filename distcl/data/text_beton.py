"""WordNet text pairs as FFCV `.beton` files: records, writing, checking, reading back.

Each record holds four fields: `a` and `b`, the byte token ids of two texts (`max_len` ids,
see `text_tokens`), `synset`, the synset's index in `read_wordnet()` order (a label for
SupCon-style losses: two records of one synset are positives of each other), and `category`,
its lexicographer file 0..44 (`wordnet.LEXNAMES`, e.g. 5 = noun.animal).

- `wordnet_train.beton`: one record per positive pair of every training synset
  (`wordnet.positive_pairs`: definition-example and example-example pairs). Synsets without
  examples give no record.
- `wordnet_test.beton`: one record per (definition, example) of every held-out synset, and one
  record (definition, definition) for a held-out synset without examples. So every held-out
  synset is there with all its examples: retrieval matches the definitions (`a`, one per
  distinct `synset`) against every example (`b`). Example-example pairs are left out here.

Ids are stored as int16 (0..256 fit; FFCV warns that torch lacks uint16 and advises int16).
As for image `.beton`s (`beton.py`), a sidecar `NAME.beton.json` records what was written
(dataset, split, count, max_len, tokenizer, holdout, the source folder and its file sizes, how
many texts were cut); a file is reused only when the sidecar, the file and the request agree.
`text_loader.text_loader` is the FFCV Loader over these files; `read_text_beton` reads a whole
file into arrays for evaluation.

Measured on WordNet 3.0 (Debian wordnet-base, holdout 0.1), UTF-8 bytes per text of the 66,159
training pairs: `a` p50 33, p90 69, p99 122, max 340; `b` p50 29, p90 56, p99 90, max 260. At
max_len 96, 2.8% of `a` and 0.7% of `b` are cut; at 128, 0.8% and 0.2%. Test definitions are
longer (p90 107; 13.9% cut at 96, 5.4% at 128): those of synsets without examples run long.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from distcl.data.source_types import DataError
from distcl.data.text_tokens import check_max_len, encode_batch, truncate
from distcl.data.wordnet import (
    DATA_FILES,
    Synset,
    positive_pairs,
    read_wordnet,
    split_of,
    wordnet_root,
)

FORMAT_VERSION = 1
SPLITS = ("train", "test")
FIELDS = ("a", "b", "synset", "category")  # stored order = the order batches come in
STORED_DTYPE = np.int16  # ids 0..256 as stored in the .beton


def split_records(synsets: list[Synset], split: str, holdout: float = 0.1) -> list[tuple]:
    """`(text_a, text_b, synset_index, category)` for each record of `split` (module doc)."""
    if split not in SPLITS:
        raise DataError(f"split must be train or test, got {split!r}")
    records = []
    for index, s in enumerate(synsets):
        if split_of(s.id, holdout) != split:
            continue
        if split == "train":
            pairs = positive_pairs(s)
        else:
            anchor = s.definition or s.examples[0]
            pairs = [(anchor, e) for e in s.examples] or [(anchor, anchor)]
        records += [(a, b, index, s.category) for a, b in pairs]
    return records


def text_beton_path(out_dir: str | os.PathLike, split: str) -> Path:
    """Where `prepare_wordnet` puts a split: OUT_DIR/wordnet_{split}.beton."""
    return Path(out_dir) / f"wordnet_{split}.beton"


def prepare_wordnet(
    out_dir: str | os.PathLike,
    root: str | os.PathLike | None = None,
    max_len: int = 96,
    holdout: float = 0.1,
    *,
    force: bool = False,
    num_workers: int = 1,
) -> dict[str, Path]:
    """Write `wordnet_train.beton` and `wordnet_test.beton` under `out_dir` unless valid ones
    for the same source, max_len and holdout are there. Returns {split: path}.

    root: the folder of data.noun etc. (default $DISTCL_WORDNET_DIR, else /usr/share/wordnet).
    max_len: tokens (bytes) per text; longer texts are cut (the module doc has the lengths).
    holdout: the fraction of synsets in the test split.
    """
    source = wordnet_root(root)
    split_of("", holdout)  # refuses a bad holdout before anything is read
    synsets, paths = None, {}
    for split in SPLITS:
        path = text_beton_path(out_dir, split)
        want = _request(source, split, max_len, holdout)
        if not force and _matches(path, want):
            paths[split] = path
            continue
        if synsets is None:
            synsets = read_wordnet(source)
        records = split_records(synsets, split, holdout)
        if not records:
            raise DataError(
                f"the {split} split of {source} has no records at holdout={holdout}; "
                f"use a holdout in (0, 1) that leaves synsets on both sides (try 0.1)"
            )
        write_text_beton(records, path, want, num_workers=num_workers)
        paths[split] = path
    return paths


def _request(source: Path, split: str, max_len: int, holdout: float) -> dict:
    """The sidecar keys a reusable file must have."""
    check_max_len(max_len)
    return {
        "format": FORMAT_VERSION,
        "dataset": "wordnet",
        "split": split,
        "max_len": int(max_len),
        "tokenizer": "bytes",
        "holdout": float(holdout),
        "source": str(source.resolve()),
        "source_bytes": {
            f"data.{pos}": (source / f"data.{pos}").stat().st_size for pos in DATA_FILES
        },
    }


def _matches(path: Path, want: dict) -> bool:
    """True when `path` is a valid text `.beton` written for the request `want`."""
    if not path.exists():
        return False
    try:
        meta = read_text_meta(path)
    except DataError as exc:
        print(f"distcl: rewriting {path}: {exc}", flush=True)
        return False
    differ = sorted(k for k, v in want.items() if meta.get(k) != v)
    if differ:
        print(f"distcl: rewriting {path}: it was written with other {', '.join(differ)}")
    return not differ


def write_text_beton(
    records: list[tuple], path: str | os.PathLike, meta: dict, num_workers: int = 1
) -> dict:
    """Write `records` (from `split_records`) atomically with FFCV's progress bar, then the
    sidecar: `meta` (needs max_len) plus count, synsets, cut texts and the file's size."""
    from ffcv.fields import IntField, NDArrayField
    from ffcv.writer import DatasetWriter

    path, max_len = Path(path), int(meta["max_len"])
    path.parent.mkdir(parents=True, exist_ok=True)
    texts_a, texts_b, synsets, categories = zip(*records, strict=True)
    ids_a = encode_batch(texts_a, max_len).astype(STORED_DTYPE)  # N x max_len
    ids_b = encode_batch(texts_b, max_len).astype(STORED_DTYPE)  # N x max_len
    rows = list(zip(ids_a, ids_b, synsets, categories, strict=True))  # what FFCV's writer reads
    ids = NDArrayField(np.dtype(STORED_DTYPE), (max_len,))
    fields = {"a": ids, "b": ids, "synset": IntField(), "category": IntField()}
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    print(f"distcl: writing {path} ({len(records)} text pairs, max_len {max_len})", flush=True)
    try:  # FFCV's writer shows a tqdm progress bar
        writer = DatasetWriter(str(tmp), fields, num_workers=num_workers)
        writer.from_indexed_dataset(rows, chunksize=512)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    cut = {
        f"cut_{k}": sum(truncate(t, max_len) != t for t in set(texts))
        for k, texts in (("a", texts_a), ("b", texts_b))
    }  # distinct texts longer than max_len
    meta = {
        **meta,
        "count": len(records),
        "synsets": len(set(synsets)),
        **cut,
        "bytes": path.stat().st_size,
    }
    meta_tmp = path.with_name(f".{path.name}.json.tmp")
    meta_tmp.write_text(json.dumps(meta, indent=1))
    os.replace(meta_tmp, path.with_name(path.name + ".json"))
    return meta


def read_text_meta(path: str | os.PathLike) -> dict:
    """The sidecar of a valid text `.beton`, or DataError naming the file and the fix."""
    path = Path(path)
    meta_path = path.with_name(path.name + ".json")
    fix = "rebuild it with prepare_wordnet(out_dir, force=True)"
    if not path.exists():
        raise DataError(f"{path} does not exist; write it with prepare_wordnet(out_dir)")
    try:
        meta = json.loads(meta_path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path} has no {meta_path.name} (an unfinished write); {fix}") from None
    except json.JSONDecodeError:
        raise DataError(f"{meta_path} is corrupt; {fix}") from None
    size = path.stat().st_size
    if meta.get("bytes") != size:
        raise DataError(f"{path} is {size} bytes, written as {meta.get('bytes')}; {fix}")
    try:
        from ffcv.reader import Reader

        reader = Reader(str(path))
    except Exception as exc:  # ffcv raises assorted errors on a bad header
        raise DataError(f"{path} is not a readable .beton ({exc}); {fix}") from None
    if tuple(reader.field_names) != FIELDS or reader.num_samples != meta.get("count"):
        raise DataError(
            f"{path} holds {reader.num_samples} records of {reader.field_names}, expected "
            f"{meta.get('count')} of {list(FIELDS)}; {fix}"
        )
    return meta


def read_text_beton(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every record in file order: {"a": N x max_len uint16, "b": same, "synset": N int64,
    "category": N int64}; `text_tokens.decode` turns a row of ids back into its text.

    Read through FFCV's Reader, without a Loader: no compile, no threads. A `.beton` keeps the
    int fields in its metadata table and, for an array field, the file offset of each row.
    """
    from ffcv.reader import Reader

    meta = read_text_meta(path)
    table = Reader(str(path)).metadata  # N records, one column per field: f0..f3
    raw = np.memmap(path, dtype=np.uint8, mode="r")
    row_bytes = meta["max_len"] * np.dtype(STORED_DTYPE).itemsize
    out = {}
    for i, name in enumerate(FIELDS):
        column = table[f"f{i}"].astype(np.int64)
        if name in ("a", "b"):  # N x row_bytes, then the stored ids
            chunks = np.array_split(column, max(1, len(column) // 4096))
            rows = np.concatenate([raw[c[:, None] + np.arange(row_bytes)] for c in chunks])
            column = rows.view(np.dtype(STORED_DTYPE).newbyteorder("<")).astype(np.uint16)
        out[name] = column
    return out
