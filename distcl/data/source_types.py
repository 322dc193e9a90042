"""The types every raw-data reader shares: DataError, ArraySource, ConcatSource.

Its own module so the readers in `native.py` and `imagefolder.py` import it, not
`sources.py`, which imports them (its `load_source` dispatches to every reader).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


class DataError(RuntimeError):
    """Data is missing, corrupt or does not match the config; the message says how to fix it."""


@dataclass(frozen=True)
class ArraySource:
    """A whole split held in memory: images `N x H x W x C` uint8, labels `N` int64."""

    name: str
    split: str
    images: np.ndarray
    labels: np.ndarray
    num_classes: int

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        return self.images[i], int(self.labels[i])

    @property
    def resolution(self) -> int:
        return int(self.images.shape[1])

    @property
    def channels(self) -> int:
        return int(self.images.shape[3])


class ConcatSource:
    """Several sources of one dataset end to end (e.g. STL-10 train + unlabeled)."""

    def __init__(self, name: str, split: str, parts: list, num_classes: int):
        self.name, self.split, self.parts, self.num_classes = name, split, parts, num_classes
        self.starts = np.cumsum([0] + [len(p) for p in parts])  # parts + 1

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        if not 0 <= i < len(self):
            raise IndexError(i)
        part = int(np.searchsorted(self.starts, i, side="right")) - 1
        return self.parts[part][i - int(self.starts[part])]

    @property
    def resolution(self) -> int:
        return self.parts[0].resolution

    @property
    def channels(self) -> int:
        return self.parts[0].channels
