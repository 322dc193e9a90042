"""Parsing distcl's own source in tests, with the garbage collector held off.

On CPython 3.11.7, `ast.parse` failed now and then in the full suite with "SystemError: AST
constructor recursion depth mismatch" after tests that compile FFCV pipelines: their numba
dispatchers are collected with finalizers that raise (printed as "Exception ignored in
<finalize object>"), and a collection that lands while the AST objects are being built leaves
the constructor's depth count off. Pausing the collector while parsing avoids it."""

from __future__ import annotations

import ast
import functools
import gc
from pathlib import Path


@functools.cache
def _parse(path: Path, mtime_ns: int) -> ast.Module:
    enabled = gc.isenabled()
    gc.disable()
    try:
        return ast.parse(path.read_text())
    finally:
        if enabled:
            gc.enable()


def parse(path: Path) -> ast.Module:
    """The module's AST (parsed once per file version; callers must not modify it)."""
    return _parse(Path(path), Path(path).stat().st_mtime_ns)
