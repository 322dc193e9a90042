"""`distcl compare`: the runs of an experiment (or of a sweep) against their baselines.

Reads FINISHED runs with `mlflow.search_runs`, prints one row per run (method, loss, batch,
temperature, kNN, linear, 1% and 10% semi-supervised accuracy) with the Δ in points against each
baseline of the experiment (see distcl.evaluation.baselines; the table is built in table.py),
writes the table as Markdown and CSV plus a bar chart, logs the three files to a new run tagged
`role=report`, and (for an experiment) writes the table as the experiment's description, linked
to that run (experiment.py).

    distcl compare [--experiment NAME | --parent RUN_ID] [--tracking-uri URI] [--out DIR]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from distcl.report.experiment import describe_experiment
from distcl.report.table import bar_chart, build_table, to_markdown, write_csv
from distcl.tracking import core as tracking


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="distcl compare", description=__doc__.splitlines()[0])
    p.add_argument(
        "--experiment", default="", help="experiment name (default: distcl-<dataset> of --config)"
    )
    p.add_argument("--parent", default="", help="compare the child runs of this (sweep) run")
    p.add_argument(
        "--tracking-uri",
        default="",
        help="MLflow URI (default: tracking.uri of --config, else $MLFLOW_TRACKING_URI)",
    )
    p.add_argument("--config", default=None, help="preset or YAML giving the defaults")
    p.add_argument("--out", default="reports", help="folder for compare.md/.csv/.png")
    p.add_argument("--no-log", action="store_true", help="do not log a role=report run")
    return p


def _runs(uri: str, args: argparse.Namespace, cfg: Any) -> tuple[str, Any] | None:
    """(experiment id, `search_runs` DataFrame) of the sweep `--parent` (its children and the
    experiment's baselines) or of the experiment; None, with a message, when it does not exist."""
    if args.parent:
        exp_id = tracking.get_run(uri, args.parent).info.experiment_id
        children = tracking.search_runs(uri, [exp_id], f"tags.mlflow.parentRunId = '{args.parent}'")
        bases = tracking.search_runs(uri, [exp_id], "tags.role = 'baseline'")
        import pandas as pd

        return exp_id, pd.concat([children, bases], ignore_index=True)
    name = args.experiment or tracking.experiment_name(cfg)
    exp = tracking.find_experiment(uri, name)
    if exp is None:
        print(
            f"distcl compare: experiment '{name}' does not exist in "
            f"{tracking.mask_secrets(uri)}; pass --experiment NAME or --tracking-uri URI"
        )
        return None
    return exp.experiment_id, tracking.search_runs(uri, [exp.experiment_id])


def _log_report(uri: str, exp_id: str, out: Path, parent: str, n_runs: int) -> str:
    """Log compare.md/.csv/.png to a new `role=report` run of the experiment; its id."""
    exp_name = tracking.find_experiment(uri, exp_id=exp_id).name
    report = tracking.start_run(
        uri,
        exp_name,
        f"compare-{time.strftime('%Y%m%d-%H%M%S')}",
        {"experiment": exp_name, "parent": parent or "-", "runs": n_runs},
        {"role": "report"},
        system_metrics=False,
    )
    for f in ("compare.md", "compare.csv", "compare.png"):
        report.log_artifact(out / f)
    report.end("FINISHED")
    print(f"distcl compare: logged to run {report.run_id} (role=report)")
    return report.run_id


def main(argv: list[str]) -> int:
    from distcl.config import schema as config

    args = _parser().parse_args(argv)
    cfg = config.load(args.config)
    uri = tracking.resolve_uri(args.tracking_uri or cfg.tracking.uri)  # else the env, else SQLite
    tracking.check_reachable(uri)
    found = _runs(uri, args, cfg)
    if found is None:
        return 2
    exp_id, df = found
    columns, rows, base_rows = build_table(df)
    md = to_markdown(columns, rows, base_rows)
    print(md)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.md").write_text(md)
    write_csv(out / "compare.csv", columns + ["run_id"], rows)
    bar_chart(rows, base_rows).savefig(out / "compare.png", dpi=110, bbox_inches="tight")
    print(f"distcl compare: wrote {out}/compare.md, compare.csv, compare.png")
    if not args.no_log:
        report_run_id = _log_report(uri, exp_id, out, args.parent, len(rows))
        if not args.parent:  # the experiment's description: the table, linked to these files
            describe_experiment(uri, exp_id, report_run_id)
    return 0
