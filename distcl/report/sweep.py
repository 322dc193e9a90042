"""What a finished sweep leaves in its MLflow parent run: the trial table (Markdown and CSV),
accuracy vs temperature per loss (PNG), and `best_config.yaml`, a full nested config that
`distcl train --config best_config.yaml` accepts as it is."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from distcl.config.schema import build
from distcl.tracking import core as tracking

# `space` below is a distcl.sweep.space.Space (params, metric, mode): the sweep stage calls
# this module, and report may not import sweep (docs/ARCHITECTURE.md), so it is typed Any


def trial_rows(grid: Any, space: Any) -> list[dict[str, Any]]:
    """One row per trial: sampled values, epochs trained, last and final metrics, status."""
    rows = []
    for res in grid:
        m = res.metrics or {}
        cfg = res.config or {}
        finished = "final_knn_acc" in m
        rows.append(
            {
                "trial_id": m.get("trial_id", Path(res.path).name),
                **{k: cfg.get(k) for k in space.params},
                "epochs": int(m.get("epoch", m.get("last_epoch", 0))),
                space.metric: m.get(space.metric),
                "linear_acc": m.get("final_linear_acc"),
                **({"loss": m.get("loss")} if space.metric != "loss" else {}),
                "status": "error" if res.error else ("finished" if finished else "stopped_early"),
                "mlflow_run_id": m.get("mlflow_run_id", ""),
            }
        )
    return rows


def _markdown(rows: list[dict[str, Any]]) -> str:
    cols = list(rows[0])

    def fmt(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def _plot(rows: list[dict[str, Any]], metric: str, base: dict[str, Any], parent) -> None:
    """Accuracy vs loss.temperature (log x), one line per loss.name."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    temp = lambda r: r.get("loss.temperature", base.get("loss.temperature"))  # noqa: E731
    losses = sorted({str(r.get("loss.name", base.get("loss.name"))) for r in rows})
    for loss in losses:
        pts = sorted(
            (float(temp(r)), r[metric])
            for r in rows
            if r[metric] is not None and str(r.get("loss.name", base.get("loss.name"))) == loss
        )
        if pts:
            ax.plot(*zip(*pts, strict=True), marker="o", label=loss)
    ax.set_xscale("log")
    ax.set_xlabel("loss.temperature")
    ax.set_ylabel(f"{metric} (last report)")
    ax.legend(title="loss.name")
    ax.grid(alpha=0.3)
    tracking.log_figure(parent, fig, "accuracy_vs_temperature.png")
    plt.close(fig)


def _close_stopped_children(rows: list[dict[str, Any]], parent) -> None:
    """ASHA kills a stopped trial's process before it can end its MLflow run: end it here."""
    for r in rows:
        if r["status"] == "finished":
            continue
        flt = f"tags.`mlflow.parentRunId` = '{parent.run_id}' and tags.trial_id = '{r['trial_id']}'"
        found = parent.client.search_runs([parent.experiment_id], filter_string=flt)
        if not found:
            continue
        r["mlflow_run_id"] = found[0].info.run_id
        child = tracking.RunLogger(parent.uri, r["mlflow_run_id"])
        child.set_tags(
            {"stopped_early": r["status"] == "stopped_early", "epochs_trained": r["epochs"]}
        )
        child.end("KILLED" if r["status"] == "stopped_early" else "FAILED")


def report_sweep(
    grid: Any, space: Any, state: dict[str, Any], base: dict[str, Any], parent, sweep_dir: str
) -> dict[str, Any]:
    """Log the table, plot and best config to the parent run; returns the sweep summary.
    `sweep_dir` is a local folder or a storage URI (s3://, gs://)."""
    from distcl.runtime.storage import write_text

    rows = trial_rows(grid, space)
    _close_stopped_children(rows, parent)
    if not rows:
        return {"trials": 0}
    parent.log_text(_markdown(rows), "trials.md")
    parent.log_text(_csv(rows), "trials.csv")
    _plot(rows, space.metric, base, parent)
    scored = [r for r in rows if r[space.metric] is not None and r["status"] == "finished"]
    scored = scored or [r for r in rows if r[space.metric] is not None]
    summary: dict[str, Any] = {
        "trials": len(rows),
        "sweep_dir": sweep_dir,
        "rows": rows,
        "parent_run_id": parent.run_id,
        "stopped_early": sum(r["status"] == "stopped_early" for r in rows),
    }
    if scored:
        sign = 1 if space.mode == "max" else -1
        best = max(scored, key=lambda r: sign * r[space.metric])
        cfg = build({**base, **{k: best[k] for k in space.params}})
        text = "# best trial of sweep {} ({}={:.4f}); distcl train --config best_config.yaml\n"
        best_yaml = text.format(state["name"], space.metric, best[space.metric]) + cfg.to_yaml()
        write_text(f"{sweep_dir}/best_config.yaml", best_yaml)
        parent.log_text(best_yaml, "best_config.yaml")
        parent.log_metrics({f"best_{space.metric}": best[space.metric]}, step=0)
        parent.set_tags(
            {
                "best_trial_id": best["trial_id"],
                "best_params": json.dumps({k: best[k] for k in space.params}),
            }
        )
        summary.update(best=best, best_config=f"{sweep_dir}/best_config.yaml")
    print(f"\nsweep {state['name']}: {len(rows)} trials\n" + _markdown(rows))
    return summary
