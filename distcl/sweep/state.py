"""Where a sweep lives and what `--resume` needs to rebuild it.

A sweep's folder (`STORAGE/NAME`, a local path or an s3:// / gs:// URI) holds Tune's experiment
state, each trial's Ray Train checkpoints under `train/`, and SWEEP_FILE: the command line's
space text, preset, fixed values, cluster kind and the MLflow parent run id, so that a resumed
sweep runs exactly the trials of the one that was interrupted.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from distcl.config.schema import ConfigError, build, load_yaml, parse_overrides
from distcl.runtime.storage import filesystem, read_text, storage_root
from distcl.sweep.space import Space, load_space

SWEEP_FILE = "distcl_sweep.json"  # in the sweep's folder: what --resume needs to rebuild it
DEFAULT_PRESET = "fashion_mnist_simclr"


def new_state(args: argparse.Namespace) -> dict[str, Any]:
    """Everything a resume needs, from the command line (written to SWEEP_FILE)."""
    space = load_space(args.space)
    base = load_yaml(args.config or DEFAULT_PRESET)
    base.update(space.overrides)
    base.update(parse_overrides(args.overrides))
    name = args.name or f"sweep-{Path(args.space).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    return {
        "name": name,
        "space_path": str(args.space),
        "space_text": Path(args.space).read_text(),
        "preset": args.config or DEFAULT_PRESET,
        "base": base,
        "autoscaling": args.autoscaling,  # --resume plans for the same cluster
    }


def sweep_dir(args: argparse.Namespace, cfg_storage: str) -> str:
    """The folder that holds sweeps: `--storage-path`, else the config's train.storage_path."""
    return storage_root(args.storage_path or cfg_storage)


def find_resumable(storage: str, name: str | None) -> str:
    """The sweep folder `storage/name`, or without a name the one whose SWEEP_FILE is newest."""
    from pyarrow.fs import FileSelector, FileType

    fs, base = filesystem(storage)
    if name:
        if fs.get_file_info(f"{base}/{name}/{SWEEP_FILE}").type == FileType.File:
            return f"{storage}/{name}"
        raise ConfigError(
            f"--resume --name {name}: no sweep at {storage}/{name}; check --name and --storage-path"
        )
    folders = fs.get_file_info(FileSelector(base, allow_not_found=True))
    records = fs.get_file_info(
        [f"{d.path}/{SWEEP_FILE}" for d in folders if d.type == FileType.Directory]
    )
    found = sorted((r for r in records if r.type == FileType.File), key=lambda r: r.mtime_ns or 0)
    if not found:
        raise ConfigError(f"--resume: no sweep under {storage}; pass --storage-path and --name")
    return f"{storage}/{found[-1].path.rstrip('/').split('/')[-2]}"


def open_state(args: argparse.Namespace) -> tuple[dict[str, Any], Space, str, str]:
    """(state, space, storage, sweep folder): read back for `--resume`, else from the command
    line (SWEEP_FILE is written once the MLflow parent run exists)."""
    if args.resume:
        storage = storage_root(args.storage_path or "runs")
        folder = find_resumable(storage, args.name)
        state = json.loads(read_text(f"{folder}/{SWEEP_FILE}"))
        return state, load_space(state["space_path"], text=state["space_text"]), storage, folder
    state = new_state(args)
    storage = sweep_dir(args, str(build(state["base"]).train.storage_path))
    return state, load_space(args.space), storage, f"{storage}/{state['name']}"
