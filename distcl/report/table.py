"""The `distcl compare` table: one row per run, with its Δ against each baseline.

`build_table` turns a `search_runs` DataFrame into rows (accuracies in %, Δ in points);
`to_markdown`, `write_csv` and `bar_chart` render them. Pure functions of the DataFrame: the
CLI (compare.py) and the experiment's description (experiment.py) both print this table.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

FIELDS = (  # column, DataFrame column, kind
    ("run", "tags.mlflow.runName", "text"),
    ("method", "tags.method", "text"),
    ("loss", "tags.loss", "text"),
    ("batch", "params.train.global_batch", "text"),
    ("temperature", "params.loss.temperature", "text"),
    ("kNN", "metrics.knn_acc", "pct"),
    ("linear", "metrics.linear_acc", "pct"),
    ("1%", "metrics.semi_1pct_acc", "pct"),
    ("10%", "metrics.semi_10pct_acc", "pct"),
)
MATCH = {
    "raw_pixels": ("split",),
    "random_init": ("split", "arch"),
    "supervised": ("split", "arch"),
}  # tags a computed baseline must share with the run


def _get(row: Any, col: str) -> Any:
    value = row.get(col) if hasattr(row, "get") else None
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return value


def _baselines(df) -> dict[str, list[Any]]:
    """Baseline runs by column name (kind, or reference name), newest first."""
    out: dict[str, list[Any]] = {}
    for _, row in df.iterrows():
        kind = _get(row, "tags.baseline") or (
            "supervised" if _get(row, "tags.method") == "supervised" else None
        )
        if kind is None:
            continue
        name = _get(row, "tags.reference") if kind == "reference" else kind
        out.setdefault(name, []).append(row)
    return out


def _pick(name: str, candidates: list[Any], run: Any) -> Any:
    """The newest baseline run on the run's split (and architecture where that matters); tags
    the run lacks (e.g. a sweep trial without final evaluation) do not restrict the choice."""
    keys = [k for k in MATCH.get(name, ()) if _get(run, f"tags.{k}") is not None]
    same = [
        b
        for b in candidates
        if b["run_id"] != run["run_id"]
        and all(_get(b, f"tags.{k}") == _get(run, f"tags.{k}") for k in keys)
    ]
    return same[0] if same else None


def build_table(df) -> tuple[list[str], list[dict[str, Any]], list[dict[str, Any]]]:
    """(columns, method rows, baseline rows) from a `search_runs` DataFrame.

    Accuracies are percentages; `Δ <baseline>` is the run's metric minus the baseline's, in
    points, on the baseline's metric (`tags.metric`, else linear accuracy).
    """
    if len(df) and "status" in df:
        df = df[df["status"] == "FINISHED"]
    roles = df["tags.role"] if "tags.role" in df else [None] * len(df)
    base_df = df[[r == "baseline" for r in roles]] if len(df) else df
    method_df = df[[r not in ("baseline", "report", "sweep") for r in roles]] if len(df) else df
    bases = _baselines(base_df)
    columns = [name for name, _, _ in FIELDS] + [f"Δ {b}" for b in bases]
    rows = []
    for _, run in method_df.iterrows():
        row = {"run_id": run["run_id"]}
        for name, col, kind in FIELDS:
            v = _get(run, col)
            row[name] = 100 * float(v) if kind == "pct" and v is not None else v
        for b, candidates in bases.items():
            base = _pick(b, candidates, run)
            metric = (_get(base, "tags.metric") or "linear_acc") if base is not None else ""
            mine = _get(run, f"metrics.{metric}")
            theirs = _get(base, f"metrics.{metric}") if base is not None else None
            row[f"Δ {b}"] = 100 * (mine - theirs) if None not in (mine, theirs) else None
        rows.append(row)
    base_rows = []
    for b, candidates in bases.items():
        metric = _get(candidates[0], "tags.metric") or "linear_acc"
        value = _get(candidates[0], f"metrics.{metric}")
        base_rows.append(
            {
                "baseline": b,
                "metric": metric,
                "value": 100 * value if value is not None else None,
                "source": _get(candidates[0], "tags.source") or "",
            }
        )
    return columns, rows, base_rows


def _fmt(v: Any, delta: bool = False) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:+.2f}" if delta else f"{v:.2f}"
    return str(v)


def to_markdown(columns: list[str], rows: list[dict], base_rows: list[dict]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += [
        "| " + " | ".join(_fmt(r.get(c), c.startswith("Δ")) for c in columns) + " |" for r in rows
    ]
    lines += [
        "",
        "Accuracies in %, Δ in points (run minus baseline, on the baseline's metric).",
        "",
        "| baseline | metric | value | source |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {b['baseline']} | {b['metric']} | {_fmt(b['value'])} | {b['source']} |"
        for b in base_rows
    ]
    return "\n".join(lines) + "\n"


def write_csv(path: Path, columns: list[str], rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        w.writerows([{c: "" if r.get(c) is None else r.get(c) for c in columns} for r in rows])


def bar_chart(rows: list[dict], base_rows: list[dict]):
    """Linear accuracy per run, with each linear-accuracy baseline as a dashed line."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(max(6, 0.6 * len(rows) + 3), 4))
    ax = fig.add_subplot()
    names = [str(r["run"]) for r in rows]
    ax.bar(range(len(rows)), [r["linear"] or 0 for r in rows], color="tab:blue")
    ax.set_xticks(range(len(rows)), names, rotation=30, ha="right", fontsize=8)
    for i, b in enumerate(x for x in base_rows if x["metric"] == "linear_acc" and x["value"]):
        ax.axhline(b["value"], ls="--", lw=1, color=f"C{(i + 1) % 10}", label=b["baseline"])
    ax.set_ylabel("linear probe accuracy (%)")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig
