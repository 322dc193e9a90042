"""Parsing distcl's own source in tests, with the garbage collector held off.

On CPython 3.11.7, `ast.parse` failed now and then in the full suite with "SystemError: AST
constructor recursion depth mismatch" after tests that compile FFCV pipelines: their numba
dispatchers are collected with finalizers that raise (printed as "Exception ignored in
<finalize object>"), and a collection that lands while the AST objects are being built leaves
the constructor's depth count off. Collecting first and pausing the collector avoids it."""

from __future__ import annotations

import ast
import gc
from pathlib import Path


def parse(path: Path) -> ast.Module:
    gc.collect()
    enabled = gc.isenabled()
    gc.disable()
    try:
        return ast.parse(path.read_text())
    finally:
        if enabled:
            gc.enable()
