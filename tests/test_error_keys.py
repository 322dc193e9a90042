"""Every `section.key` a string in distcl/ names is a real key, so a message's fix can be typed.

The scan reads every string literal (messages, f-string parts, docstrings) in distcl/ and
picks the names that look like keys: a config section before the dot (`train.chunk_sizee`),
or a config field after it (`gradcache.chunk_size`, which is `train.chunk_size`).
"""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from dataclasses import fields
from pathlib import Path

import distcl
from distcl.config.schema import Config
from distcl.sweep.space import Space
from tests.source import parse

PKG = Path(distcl.__file__).parent
KEYS = set(Config().to_flat())
SECTIONS = {k.split(".")[0] for k in KEYS} | {"sweep"}
FIELDS = {k.split(".")[1] for k in KEYS}
# A sweep's parent MLflow run logs its search space (`Space`'s fields) under sweep.*, and these
# facts of the sweep itself (distcl/sweep/run.py).
SWEEP_KEYS = {f"sweep.{f.name}" for f in fields(Space)} | {
    f"sweep.{k}"
    for k in (
        "trials",  # how many trials the space makes
        "space",  # the path of the space's YAML file
        "preset",  # the preset the trials start from
        "max_concurrent_used",  # trials at once after fitting the cluster
        "cpus_per_worker",  # CPUs each trial worker got
        "ray_cpus",  # the cluster's CPUs and GPUs, and whether it autoscales
        "ray_gpus",
        "autoscaling",
    )
}
NOT_KEYS = {  # key-shaped names that are code, not settings
    "loss.backward": "torch's Tensor.backward, called on a loss (train/gradcache.py docstring)",
    "encoder.feat_dim": "the encoder module's attribute (models/ docstrings)",
    "space.seed": "the sweep Space's attribute, documented in a docstring (sweep/run.py)",
    **{
        f"data.{pos}": "a WordNet data file (data/wordnet.py, data/text_beton.py)"
        for pos in ("noun", "verb", "adj", "adv")
    },
}
KEYLIKE = re.compile(r"(?<![\w.])([a-z_]+)\.([a-z_]+)\b")


def unknown_keys(text: str) -> set[str]:
    """Key-shaped names in `text` that are neither config keys nor known non-keys."""
    found = set()
    for m in KEYLIKE.finditer(text):
        section, name = m.groups()
        if name != "py" and (section in SECTIONS or name in FIELDS):  # optim.py: a file
            found.add(m.group(0))
    return found - KEYS - SWEEP_KEYS - set(NOT_KEYS)


def strings(path: Path):
    """(line, text) of every str constant in `path`, f-string parts included."""
    for node in ast.walk(parse(path)):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            yield node.lineno, node.value


def test_every_key_a_string_names_exists():
    wrong = defaultdict(list)
    for path in sorted(PKG.rglob("*.py")):
        for line, text in strings(path):
            for key in unknown_keys(text):
                wrong[key].append(f"{path.relative_to(PKG.parent)}:{line}")
    assert not wrong, "strings name keys that do not exist:\n" + "\n".join(
        f"  {k}: {', '.join(sorted(set(v)))}" for k, v in sorted(wrong.items())
    )


def test_the_scan_catches_the_old_wrong_names():
    old = [
        "precision.channels_last=True but the model has no 4-D (conv) weights",
        "model.sync_bn=True but there is no process group with world size > 1",
        f"data.global_batch={1000} is not divisible by world_size=3 x gradcache.chunk_size=128",
        "optim.base_lr must be >= 0",
    ]
    found = set().union(*(unknown_keys(t) for t in old))
    assert found == {
        "precision.channels_last",
        "model.sync_bn",
        "data.global_batch",
        "gradcache.chunk_size",
        "optim.base_lr",
    }
    assert not unknown_keys(
        "set train.sync_bn=false, or train.chunk_size=0 (see distcl.data.loader)"
    )
