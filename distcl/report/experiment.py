"""The compare table as the experiment's description in the MLflow UI, refreshed after each run.

The description shows above the experiment's runs table, first line only until expanded, so
that line names the best run and its Δ against the baselines; the rest is table.py's Markdown,
cut to the newest runs that fit in an experiment tag.
"""

from __future__ import annotations

import time

from distcl.report.table import build_table, to_markdown
from distcl.tracking import core as tracking
from distcl.tracking.review import NOTE_TAG, UI_QUERY, ui_link

MAX_NOTE = 18000  # characters; MLflow caps an experiment tag value at 20,000


def compare_markdown(uri: str, experiment_id: str) -> tuple[str, str]:
    """(`distcl compare`'s Markdown table of the experiment's FINISHED runs, newest first, cut
    to the newest runs that fit in a description; a line naming the best linear accuracy)."""
    columns, rows, base_rows = build_table(tracking.search_runs(uri, [experiment_id]))
    md = to_markdown(columns, rows, base_rows)
    keep = len(rows)
    while len(md) > MAX_NOTE - 1000 and keep > 1:
        keep = max(1, keep // 2)
        md = to_markdown(columns, rows[:keep], base_rows)
        md += f"\n({len(rows) - keep} older runs left out: run `distcl compare` for all.)\n"
    scored = [r for r in rows if r.get("linear") is not None]
    if not scored:
        return md, "no finished run with a linear probe yet"
    best = max(scored, key=lambda r: r["linear"])
    first = ("Δ raw_pixels", "Δ random_init", "Δ supervised")  # then the published references
    order = sorted((c for c in columns if c.startswith("Δ")), key=lambda c: c not in first)
    deltas = [f"{c} {best[c]:+.2f} pts" for c in order if best.get(c) is not None]
    best_line = f"best linear probe: {best['run']} {best['linear']:.2f}%"
    return md, best_line + (f" ({', '.join(deltas[:3])})" if deltas else "")


def describe_experiment(uri: str, experiment_id: str, report_run_id: str = "") -> str:
    """Write the compare table as the experiment's description (shown above its runs table,
    first line only until expanded, so that line names the best run); with `report_run_id`,
    link the `distcl compare` run holding the .md/.csv/.png."""
    md, best = compare_markdown(uri, experiment_id)
    head = f"**distcl compare**: {best}; updated {time.strftime('%Y-%m-%d %H:%M:%S %Z')}"
    if report_run_id:
        link = f"#/experiments/{experiment_id}/runs/{report_run_id}/artifacts{UI_QUERY}"
        head += f"; files in the [report run's artifacts]({link})"
    text = f"{head}\n\n{md}"
    from mlflow.tracking import MlflowClient

    MlflowClient(tracking_uri=uri).set_experiment_tag(experiment_id, NOTE_TAG, text[:MAX_NOTE])
    return text


def after_run(uri: str, experiment_id: str, run_id: str) -> None:
    """After a run FINISHED: refresh the experiment's compare table; print the run's link."""
    try:
        describe_experiment(uri, experiment_id)
    except Exception as exc:
        print(f"distcl: experiment description not updated ({type(exc).__name__}: {exc})")
    print(f"distcl: the run in MLflow: {ui_link(uri, experiment_id, run_id)}")
    print(f"distcl: its experiment: {ui_link(uri, experiment_id)}")
