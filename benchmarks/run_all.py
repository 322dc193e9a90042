"""`make bench`: run every benchmark, collect its ``--json`` and append a dated section to
``benchmarks/RESULTS.md`` with the machine description (cores, CPU, GPU, memory, versions, load).

Each benchmark runs as its own process (``python benchmarks/bench_<topic>.py [--quick] --json
F``) in its own process group, so a timeout stops it and everything it started (Ray daemons
included) and the suite moves on. A failed or timed-out benchmark is recorded as such in the
section, never dropped; the exit status is 1 when any failed.

Budget: the full suite is sized for under 15 minutes on an idle 2-core machine; ``--quick``
(under 2 minutes per benchmark by the convention) for well under 10. ``--budget-s`` caps the
whole run: a benchmark gets what is left, at most its own limit.

Run: python benchmarks/run_all.py [--quick] [--only NAME ...] [--results PATH] [--budget-s S]
     [--limit-s S]  (per-benchmark limit instead of the table's, for a loaded machine)
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import harness  # noqa: E402

# name -> (script, limit in seconds full, limit quick). Order: cheap and independent first.
BENCHMARKS = {
    "loss": ("bench_loss.py", 180, 150),
    "loader": ("bench_loader.py", 150, 120),
    "gradcache": ("bench_gradcache.py", 120, 120),
    "collectives": ("bench_collectives.py", 120, 90),
    "train": ("bench_train.py", 300, 300),
    "scaling": ("bench_scaling.py", 240, 240),
}
PACKAGES = ("torch", "torchvision", "ray", "ffcv", "numpy", "numba", "mlflow")
TAIL_LINES = 40  # lines of each benchmark's output kept in RESULTS.md


def versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


def git_commit() -> str:
    """Short HEAD plus `+dirty` when the tree has changes (read-only git calls)."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=HERE,
            text=True,
            capture_output=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], cwd=HERE, text=True, capture_output=True, check=True
        ).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def run_one(name: str, quick: bool, limit_s: float, out_dir: Path) -> dict:
    """Run one benchmark; returns status, wall seconds, metrics and the tail of its output."""
    script, json_path = HERE / BENCHMARKS[name][0], out_dir / f"{name}.json"
    cmd = [sys.executable, str(script), *(["--quick"] if quick else []), "--json", str(json_path)]
    env = {**os.environ, "TQDM_DISABLE": "1", "PYTHONUNBUFFERED": "1"}
    print(f"\n=== {name}: {' '.join(cmd[1:])} (limit {limit_s:.0f} s)", flush=True)
    lines: list[str] = []
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,
    )
    timed_out = threading.Event()

    def stop() -> None:  # the group this call started, Ray daemons included
        timed_out.set()
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:  # it ended just now
            pass

    watchdog = threading.Timer(limit_s, stop)  # fires even while the child prints nothing
    watchdog.start()
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # stream it, and keep it for RESULTS.md
            print(line, end="", flush=True)
            lines.append(line.rstrip())
        proc.wait()
    finally:
        watchdog.cancel()
    status = f"timed out after {limit_s:.0f} s" if timed_out.is_set() else "ok"
    if status == "ok" and proc.returncode != 0:
        status = f"failed (exit code {proc.returncode})"
    metrics = json.loads(json_path.read_text()) if status == "ok" and json_path.exists() else {}
    keep = [ln for ln in lines if "it/s]" not in ln and not ln.startswith(("USDT:", "ERROR:20"))]
    return {
        "status": status,
        "wall_s": time.perf_counter() - start,
        "metrics": metrics,
        "tail": keep[-TAIL_LINES:],
    }


def section(results: dict[str, dict], quick: bool, started: str, total_s: float) -> str:
    """The markdown appended to RESULTS.md."""
    m = harness.machine_description()
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    lines = [
        f"## {started} UTC: `run_all.py{' --quick' if quick else ''}` ({total_s / 60:.1f} min)",
        "",
        f"- machine: {m.get('cores')} cores, {m.get('cpu')}, {m.get('memory_gib')} GiB, "
        f"GPU: {m.get('gpu')}, torch threads {m.get('torch_threads')}",
        f"- versions: Python {m.get('python')}, "
        + ", ".join(f"{k} {v}" for k, v in versions().items()),
        f"- commit: {git_commit()}; load average at the end (1/5/15 min): {load} "
        "(a shared machine: compare ratios within one run, not absolute numbers across runs)",
        "",
        "| benchmark | status | wall s | metrics |",
        "|---|---|---|---|",
    ]
    for name, r in results.items():
        shown = ", ".join(f"{k}={v:.4g}" for k, v in sorted(r["metrics"].items()))
        lines.append(f"| {name} | {r['status']} | {r['wall_s']:.0f} | {shown or '-'} |")
    for name, r in results.items():
        lines += [
            "",
            f"<details><summary>{name} output (last {TAIL_LINES} lines)</summary>",
            "",
            "```",
            *r["tail"],
            "```",
            "",
            "</details>",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="each benchmark with --quick")
    parser.add_argument("--only", nargs="+", choices=list(BENCHMARKS), default=list(BENCHMARKS))
    parser.add_argument("--results", type=Path, default=HERE / "RESULTS.md")
    parser.add_argument("--budget-s", type=float, default=900.0, help="cap for the whole run")
    parser.add_argument("--limit-s", type=float, default=0.0, help="per-benchmark cap (0 = table)")
    args = parser.parse_args()
    started = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M")
    t0 = time.perf_counter()
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="distcl-bench-") as tmp:
        for name in args.only:
            left = args.budget_s - (time.perf_counter() - t0)
            if left < 30:
                results[name] = {
                    "status": "skipped: --budget-s spent",
                    "wall_s": 0.0,
                    "metrics": {},
                    "tail": [],
                }
                continue
            limit = min(left, args.limit_s or BENCHMARKS[name][2 if args.quick else 1])
            results[name] = run_one(name, args.quick, limit, Path(tmp))
    text = section(results, args.quick, started, time.perf_counter() - t0)
    if not args.results.exists():
        args.results.write_text("# Benchmark results\n\nAppended by `make bench`.\n")
    with args.results.open("a") as f:
        f.write("\n" + text)
    print(f"\nappended to {args.results}:\n\n" + text.split("\n<details>")[0])
    sys.exit(0 if all(r["status"] == "ok" for r in results.values()) else 1)


if __name__ == "__main__":
    main()
