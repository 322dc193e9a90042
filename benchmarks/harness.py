"""Shared helpers for ``benchmarks/bench_<topic>.py`` (the convention in DESIGN.md).

- ``parse_args``: ``--quick`` and ``--json PATH``.
- ``measure`` / ``measure_alternating``: wall times after warm-up; compared variants run in turn
  (A B A B ...) so drift on a shared machine hits all of them alike.
- ``peak_memory``: peak resident memory of one call, measured in a FRESH spawned process.
- ``print_table``: median / min / max per variant and the ratio to a baseline variant.
- ``write_json``: the flat ``{"metric": number}`` object; ``machine_description``.

Peak memory, and why it is sound for torch on CPU: tracemalloc only sees Python's allocator,
not torch's, so it misses tensors. Instead the child process builds its inputs
(``setup(*args)`` returns the callable to measure), reads its resident set ``VmRSS``, resets
the kernel's high-water mark (writing ``5`` to ``/proc/self/clear_refs``), runs the callable
once and reads ``VmHWM``: the difference is the extra resident memory the call needed at its
peak, on top of its inputs. A fresh process per measurement means no earlier variant's pages
sit in glibc's free lists or torch's pools and hide (or add to) this one's. Where
``clear_refs`` cannot be written, the fallback is the growth of ``ru_maxrss`` across the call,
which can only under-count if setup itself peaked higher than it ended.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import re
import resource
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def parse_args(description: str, argv: list[str] | None = None) -> argparse.Namespace:
    """The convention's command line: ``[--quick] [--json PATH]``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="smaller run, under 2 minutes")
    parser.add_argument("--json", type=Path, default=None, help="write flat metrics here")
    return parser.parse_args(argv)


def measure(fn: Callable[[], Any], reps: int, warmup: int = 1) -> list[float]:
    """Wall-clock seconds of ``reps`` calls of ``fn`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def measure_alternating(
    variants: dict[str, Callable[[], Any]], reps: int, warmup: int = 1
) -> dict[str, list[float]]:
    """Times of each variant, interleaved: warm-up all, then rep 1 of each, rep 2 of each, ..."""
    for fn in variants.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(reps):
        for name, fn in variants.items():
            times[name] += measure(fn, reps=1, warmup=0)
    return times


def _status_kib(field: str) -> int:
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE).group(1))


def _child_peak(setup: Callable[..., Callable[[], Any]], args: tuple, conn: Any) -> None:
    try:
        run = setup(*args)
        try:
            Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current VmRSS
            before = _status_kib("VmRSS")
            run()
            peak_kib = _status_kib("VmHWM") - before
        except OSError:
            before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
            run()
            peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
        conn.send(("ok", peak_kib * 1024))
    except BaseException as exc:  # report, don't hang the parent
        conn.send(("error", repr(exc)))
    finally:
        conn.close()


def peak_memory(setup: Callable[..., Callable[[], Any]], *args: Any) -> int:
    """Bytes of resident memory a call needs above its inputs, measured in a fresh process.

    ``setup`` must be a module-level function (it is pickled into a spawned child); it builds
    the inputs, sets the thread count, does any small warm-up, and returns the zero-argument
    callable that is measured once. See the module docstring for the method.
    """
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child_peak, args=(setup, args, child))
    proc.start()
    child.close()
    try:
        status, value = parent.recv()
    except EOFError:  # the child died before reporting (e.g. killed for memory)
        status, value = "error", "no report"
    proc.join()
    if status == "error" and proc.exitcode:
        value = f"{value} (exit code {proc.exitcode})"
    if status != "ok":
        raise RuntimeError(f"peak_memory({setup.__name__}{args}) failed in the child: {value}")
    return int(value)


def summarize(times: list[float]) -> dict[str, float]:
    """Median, min and max of a list of times."""
    return {"median": statistics.median(times), "min": min(times), "max": max(times)}


def print_table(
    title: str,
    times: dict[str, list[float]],
    baseline: str,
    memory: dict[str, int] | None = None,
) -> None:
    """One block per comparison: time stats, time ratio and (optional) peak-memory ratio."""
    print(f"\n{title}")
    header = f"  {'variant':<14}{'median s':>10}{'min s':>10}{'max s':>10}{'x base':>8}"
    if memory:
        header += f"{'peak MiB':>11}{'x base':>8}"
    print(header)
    base_time = statistics.median(times[baseline])
    for name, values in times.items():
        stats = summarize(values)
        line = (
            f"  {name:<14}{stats['median']:>10.4f}{stats['min']:>10.4f}{stats['max']:>10.4f}"
            f"{stats['median'] / base_time:>8.3f}"
        )
        if memory:
            line += f"{memory[name] / 2**20:>11.1f}{memory[name] / memory[baseline]:>8.3f}"
        print(line)


def write_json(path: Path | None, metrics: dict[str, float]) -> None:
    """Write the flat ``{"metric": number}`` object (no-op when ``path`` is None)."""
    if path is None:
        return
    bad = {k: v for k, v in metrics.items() if not isinstance(v, int | float)}
    if bad:
        raise ValueError(f"benchmark metrics must be numbers, got {bad}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")


def machine_description() -> dict[str, Any]:
    """Cores, CPU model, memory, Python/torch versions and the GPU (if any)."""
    cpuinfo = Path("/proc/cpuinfo")
    model = platform.processor() or "unknown"
    if cpuinfo.exists():
        found = re.search(r"^model name\s*:\s*(.+)$", cpuinfo.read_text(), re.MULTILINE)
        model = found.group(1).strip() if found else model
    info: dict[str, Any] = {
        "cpu": model,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
    }
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        info["memory_gib"] = round(pages / 2**30, 1)
    except (ValueError, OSError):
        pass
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    except ImportError:
        info["torch"] = "not installed"
    return info
