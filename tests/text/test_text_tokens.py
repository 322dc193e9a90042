"""Byte tokens: ids 1..256 and 0 padding, an exact round trip, cuts at a character boundary."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from distcl.data.source_types import DataError
from distcl.data.text_tokens import decode, encode, encode_batch, truncate


def test_ids_are_bytes_plus_one_then_padding():
    ids = encode("ab", 5)
    assert ids.dtype == np.uint16 and ids.tolist() == [98, 99, 0, 0, 0]
    assert encode("\xff\x00", 4).max() <= 256  # every byte value has an id in 1..256


@pytest.mark.parametrize("text", ["", "a dog barked", "naïve café ☕", "tab\tand\nnewline"])
def test_round_trip_is_exact(text):
    assert decode(encode(text, 64)) == text
    assert decode(torch.from_numpy(encode(text, 64).astype(np.int64))) == text


def test_long_text_is_cut_at_a_character_boundary():
    assert decode(encode("abcdef", 4)) == truncate("abcdef", 4) == "abcd"
    assert truncate("aé", 2) == "a" and encode("aé", 2).tolist() == [98, 0]  # é is 2 bytes
    assert encode_batch(["a", "bc"], 3).shape == (2, 3)


def test_bad_arguments():
    with pytest.raises(DataError, match="max_len"):
        encode("a", 0)
    with pytest.raises(DataError, match="0..256"):
        decode([300])
