"""Checkpoints: one `state.pt` per checkpoint directory, written atomically, loaded weights-only.

A checkpoint holds everything a run needs to continue exactly: model and optimizer state, the
epoch and global step (the LR schedule is a pure function of the step), RNG states, the loader
seed and the MLflow run id. Only tensors, numbers, strings and containers go in, so
`torch.load(..., weights_only=True)` can read it and a checkpoint cannot run code.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

STATE_FILE = "state.pt"


class CheckpointError(RuntimeError):
    """A checkpoint is missing or unreadable; the message names the file."""


def save(directory: str | Path, state: dict[str, Any]) -> Path:
    """Write `state` to `directory/state.pt` via a temp file and an atomic rename."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / STATE_FILE
    tmp = directory / f".{STATE_FILE}.tmp{os.getpid()}"
    try:
        torch.save(state, tmp)
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    return final


def load(directory: str | Path) -> dict[str, Any]:
    """Read `directory/state.pt` with `weights_only=True`, or raise CheckpointError naming it."""
    path = Path(directory) / STATE_FILE
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for truncated or foreign files
        raise CheckpointError(f"checkpoint {path} is corrupt or unreadable: {exc}") from None


def rng_state() -> dict[str, Any]:
    return {
        "torch": torch.get_rng_state(),
        "numpy": torch.from_numpy(np.random.get_state()[1].astype(np.int64)),
        "python": torch.tensor(random.getstate()[1], dtype=torch.int64),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np_state = np.random.get_state()
    np.random.set_state((np_state[0], state["numpy"].numpy().astype(np.uint32), *np_state[2:]))
    py = random.getstate()
    random.setstate((py[0], tuple(int(v) for v in state["python"].tolist()), py[2]))


def encoder_state(model_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The encoder's weights out of a full method state dict (keys `encoder.*`)."""
    return {k[len("encoder.") :]: v for k, v in model_state.items() if k.startswith("encoder.")}


def load_previous(latest: str | Path, error: Exception) -> tuple[dict[str, Any], Path]:
    """After `latest` failed to load: the newest older sibling checkpoint that loads.

    Ray names checkpoint folders `checkpoint_<timestamp>`, so name order is time order.
    """
    latest = Path(latest)
    older = sorted(
        (p for p in latest.parent.glob("checkpoint_*") if p.is_dir() and p.name < latest.name),
        reverse=True,
    )
    for candidate in older:
        try:
            return load(candidate), candidate
        except CheckpointError:
            continue
    raise CheckpointError(f"{error}; and no older readable checkpoint in {latest.parent}")
