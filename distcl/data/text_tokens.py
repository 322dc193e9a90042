"""Byte tokens for text: the UTF-8 bytes of a string, shifted by one, padded with zeros.

Token id `b + 1` stands for byte `b` (ids 1..256) and 0 is padding, so a text becomes a fixed
`max_len` row of `uint16` ids (256 ids plus padding do not fit in `uint8`). Why bytes and not a
learned subword vocabulary:
- there is no vocabulary to train, store next to each `.beton`, or version: the "tokenizer" is
  UTF-8 itself, and a `.beton` written today reads the same in any later run;
- the round trip is exact: `decode(encode(t, n)) == t` whenever `t` fits in `n` bytes, and
  otherwise the text is cut at the last whole character that fits (`truncate`);
- nothing new to install: the `tokenizers` package is not in this environment.
The price is longer sequences than subwords (one id per character for English text), which the
encoder pays for; WordNet glosses are short (see `distcl.data.text_beton` for the measured
lengths), so `max_len` around 100 keeps almost every text whole.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from distcl.data.source_types import DataError

PAD = 0  # the padding id; byte b has id b + 1
VOCAB_SIZE = 257  # ids 0..256: padding and the 256 byte values
DTYPE = np.uint16  # smallest unsigned type holding id 256


def check_max_len(max_len: int) -> None:
    """Refuse a max_len below one token, naming the setting and a value to try."""
    if int(max_len) < 1:
        raise DataError(f"max_len must be >= 1 token (one byte each), got {max_len} (try 96)")


def _kept_bytes(text: str, max_len: int) -> bytes:
    """The UTF-8 bytes of `text`, cut to `max_len` at a character boundary."""
    data = text.encode("utf-8")
    if len(data) <= max_len:
        return data
    # "ignore" drops only the partial character the cut left at the end (the rest is valid)
    return data[:max_len].decode("utf-8", errors="ignore").encode("utf-8")


def truncate(text: str, max_len: int) -> str:
    """The part of `text` that `encode(text, max_len)` keeps."""
    check_max_len(max_len)
    return _kept_bytes(text, max_len).decode("utf-8")


def encode(text: str, max_len: int) -> np.ndarray:
    """`text` -> `max_len` uint16 ids: UTF-8 bytes + 1, then zeros; longer texts are cut."""
    check_max_len(max_len)
    ids = np.zeros(max_len, dtype=DTYPE)
    data = np.frombuffer(_kept_bytes(text, max_len), dtype=np.uint8)
    ids[: len(data)] = data.astype(DTYPE) + 1
    return ids


def encode_batch(texts: Iterable[str], max_len: int) -> np.ndarray:
    """Many texts -> `N x max_len` uint16 ids, one row per text."""
    check_max_len(max_len)
    rows = [encode(t, max_len) for t in texts]
    return np.stack(rows) if rows else np.zeros((0, max_len), dtype=DTYPE)


def decode(ids) -> str:
    """Ids (any integer array-like or tensor, one text) -> the text; padding is skipped."""
    arr = np.asarray(ids).astype(np.int64).ravel()
    if arr.size and (arr.min() < 0 or arr.max() >= VOCAB_SIZE):
        raise DataError(f"byte token ids must be in 0..256, got {arr.min()}..{arr.max()}")
    data = (arr[arr != PAD] - 1).astype(np.uint8).tobytes()
    return data.decode("utf-8", errors="replace")


def byte_lengths(texts: Iterable[str]) -> np.ndarray:
    """UTF-8 length of each text: the tokens it needs before any cut (to choose max_len)."""
    return np.array([len(t.encode("utf-8")) for t in texts], dtype=np.int64)
