"""Checkpoints: one `state.pt` per checkpoint directory, written atomically, loaded weights-only.

A checkpoint holds everything a run needs to continue exactly: model and optimizer state, the
epoch and global step (the LR schedule is a pure function of the step), RNG states, the loader
seed and the MLflow run id. Only tensors, numbers, strings and containers go in, so
`torch.load(..., weights_only=True)` can read it and a checkpoint cannot run code. A checkpoint
that does not load is passed over for the newest older one that does (`load_with_fallback`).
"""

from __future__ import annotations

import io
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


def load(directory: str | Path, filesystem: Any = None) -> dict[str, Any]:
    """Read `directory/state.pt` with `weights_only=True`, or raise CheckpointError naming it.

    `filesystem` is a Ray checkpoint's pyarrow filesystem (`Checkpoint.filesystem`), so a
    checkpoint on S3 or GCS is read where it is; None reads a local path.
    """
    path = f"{str(directory).rstrip('/')}/{STATE_FILE}"
    try:
        if filesystem is None:
            return torch.load(path, map_location="cpu", weights_only=True)
        with filesystem.open_input_file(path) as f:
            data = io.BytesIO(f.read())
        return torch.load(data, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} does not exist") from None
    except Exception as exc:  # torch raises several types for truncated or foreign files
        raise CheckpointError(
            f"checkpoint {path} is corrupt or unreadable ({_reason(exc)})"
        ) from None


def _reason(exc: Exception) -> str:
    """The first sentence of torch's error (its weights-only refusal is a paragraph whose cause
    follows "WeightsUnpickler error:")."""
    text = " ".join(str(exc).split())
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
    return f"{type(exc).__name__}: {text.strip().split('. ')[0][:160]}".rstrip(": ")


def rng_state() -> dict[str, Any]:
    """Every RNG a resumed run draws from: torch CPU, numpy, Python and, once CUDA is in use,
    this process's current CUDA device (dropout and random ops on the GPU draw from it)."""
    state = {
        "torch": torch.get_rng_state(),
        "numpy": torch.from_numpy(np.random.get_state()[1].astype(np.int64)),
        "python": torch.tensor(random.getstate()[1], dtype=torch.int64),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()  # a CPU ByteTensor: loads weights_only
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore :func:`rng_state`'s output; a CUDA state is restored where CUDA is available
    (a GPU checkpoint resumed on a CPU machine skips it)."""
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    np_state = np.random.get_state()
    np.random.set_state((np_state[0], state["numpy"].numpy().astype(np.uint32), *np_state[2:]))
    py = random.getstate()
    random.setstate((py[0], tuple(int(v) for v in state["python"].tolist()), py[2]))


def encoder_state(model_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The encoder's weights out of a full method state dict (keys `encoder.*`)."""
    return {k[len("encoder.") :]: v for k, v in model_state.items() if k.startswith("encoder.")}


def load_with_fallback(
    latest: str | Path, filesystem: Any = None
) -> tuple[dict[str, Any], str, list[CheckpointError]]:
    """Load checkpoint `latest` or, when it does not load, the newest older one that does.

    Returns (state, the directory it came from, the errors of the checkpoints passed over).
    The older ones are the `checkpoint_<timestamp>` siblings of `latest` on its storage (local,
    S3, GCS), so name order is time order. A folder Ray did not get to register before a crash
    is either a complete state of the same run or fails to load and is passed over too.
    """
    import pyarrow.fs

    fs = filesystem or pyarrow.fs.LocalFileSystem()
    latest = str(latest if filesystem else Path(latest).resolve())
    parent, name = latest.rstrip("/").rsplit("/", 1)
    infos = fs.get_file_info(pyarrow.fs.FileSelector(parent, allow_not_found=True))
    older = sorted(
        (
            i.base_name
            for i in infos
            if i.type == pyarrow.fs.FileType.Directory
            and i.base_name.startswith("checkpoint_")
            and i.base_name < name
        ),
        reverse=True,
    )
    skipped: list[CheckpointError] = []
    for candidate in [f"{parent}/{name}", *(f"{parent}/{n}" for n in older)]:
        try:
            return load(candidate, fs), candidate, skipped
        except CheckpointError as exc:
            skipped.append(exc)
    raise CheckpointError("; ".join(map(str, skipped)) + f"; no readable checkpoint in {parent}")
