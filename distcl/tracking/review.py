"""What a reviewer sees in the MLflow UI: experiment kind, datasets, descriptions, registry.

core.py logs what a run measures; this module makes the MLflow UI show it:

- the experiment's kind tag, so MLflow 3 treats it as model training, not a GenAI app, and a
  shared view of its runs table that shows the accuracy columns;
- the user, source and git commit tags MLflow's fluent API would set (Source column);
- the `.beton`s as dataset inputs (the runs table's Dataset column);
- the run's description (its result line against the baselines); the experiment's
  description, the `distcl compare` table, is written by distcl/report/experiment.py;
- the encoder of each finished method run as a new version of a registered model.

MLflow 3.17's UI picks the view from a `workflowType` URL parameter (else the browser's last
choice, else GenAI) before it reads the kind tag, so links printed here carry
`?workflowType=machine_learning`; the tag is what MLflow's other clients and older 3.x UIs read.
Its runs table keeps the column choice in each browser; the experiment's shared view
(`viewStateShareKey=distcl` in the link) brings the accuracy columns to any browser. Both are UI
state of MLflow 3.17, checked in Chromium by tests/test_mlflow_ui.py.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from distcl.tracking.uri import global_uri, mask_secrets

KIND_TAG = "mlflow.experimentKind"  # read by the UI's experiment page (MLflow 3)
KIND = "custom_model_development"  # the UI's "Model training" kind; GenAI is genai_development
NOTE_TAG = "mlflow.note.content"  # a run's or experiment's description, rendered as Markdown
UI_QUERY = "?workflowType=machine_learning"  # MLflow 3.17's UI: open the training-runs view
MAX_RUN_NOTE = 8000  # characters; MLflow caps a run tag value at 8,000
_METRICS = (("linear_acc", "linear"), ("knn_acc", "kNN"))  # result key, label


VIEW_KEY = "distcl"  # the runs table's shared view: `?viewStateShareKey=distcl`
VIEW = {  # the runs table's columns: the accuracies next to the run name (MLflow 3.17 UI state)
    "selectedColumns": [
        "attributes.`Source`",
        "attributes.`Models`",
        "attributes.`Dataset`",
        "metrics.`linear_acc`",
        "metrics.`knn_acc`",
    ],
    "columnOrder": [
        "attributes.`Run Name`",
        "metrics.`linear_acc`",
        "metrics.`knn_acc`",
        "runDateAndNestInfo",  # Created
        "attributes.`Dataset`",
        "duration",
        "attributes.`Source`",
        "attributes.`Models`",
    ],
}


def training_tags() -> dict[str, str]:
    """The kind tag (model training) and the runs table's shared view (accuracy columns
    shown; a browser's own column choice stays local to it)."""
    return {KIND_TAG: KIND, f"mlflow.sharedViewState.{VIEW_KEY}": json.dumps(VIEW)}


def mark_training(client: Any, experiment: Any) -> None:
    """Set `training_tags()` on `experiment`; idempotent (no write when they are there)."""
    for key, value in training_tags().items():
        if experiment.tags.get(key) != value:
            client.set_experiment_tag(experiment.experiment_id, key, value)


def context_tags(tags: dict[str, str]) -> dict[str, str]:
    """`tags` over what MLflow's fluent `start_run` adds (user, source name and type, git
    commit): the runs table's User and Source columns, the run page's Created by and Source."""
    from mlflow.tracking.context.registry import resolve_tags

    commit = {"mlflow.source.git.commit": tags["git_commit"]} if "git_commit" in tags else {}
    return resolve_tags({**commit, **tags})  # distcl's own commit: the package's, not argv[0]'s


def beton_digest(path: str | Path) -> str:
    """A cheap content id of a `.beton`: its sidecar (count, bytes, storage options, raw root)
    plus size and modification time, never the file's contents (gigabytes for ImageNet)."""
    path = Path(path)
    sidecar = path.with_name(path.name + ".json")
    st = path.stat()
    h = hashlib.sha256(f"{st.st_size}:{st.st_mtime_ns}".encode())
    if sidecar.is_file():
        h.update(json.dumps(json.loads(sidecar.read_text()), sort_keys=True).encode())
    return h.hexdigest()[:8]  # MLflow's own dataset digests are 8 hex characters


def _dataset(path: str, context: str, meta: dict[str, Any]) -> Any:
    from mlflow.entities import Dataset, DatasetInput, InputTag

    p = Path(path)
    sidecar = p.with_name(p.name + ".json")
    side = json.loads(sidecar.read_text()) if sidecar.is_file() else {}
    profile = {k: side[k] for k in ("count", "resolution", "channels", "num_classes") if k in side}
    source = {"uri": str(p), **({"raw_root": side["root"]} if side.get("root") else {})}
    ds = Dataset(
        name=p.stem,  # dataset-split[-firstN], as the split tags name it
        digest=beton_digest(p),
        source_type="local",
        source=json.dumps(source),
        profile=json.dumps(profile or {k: meta[k] for k in meta if k != "count"}),
    )
    return DatasetInput(ds, [InputTag("mlflow.data.context", context)])


def log_datasets(logger: Any, data: dict[str, Any]) -> None:
    """Log the training `.beton` (context `training`) and the probe's splits (`evaluation`)
    as the run's dataset inputs; logging the same files again adds nothing."""
    if not data.get("train_path"):
        return  # a run without data files (tests of the run bookkeeping)
    pairs = [(data["train_path"], "training")]
    for key in ("train_eval_path", "test_path"):
        if data.get(key) and data[key] != data["train_path"]:
            pairs.append((data[key], "evaluation"))
    inputs = [_dataset(path, ctx, data.get("meta", {})) for path, ctx in pairs]
    logger.client.log_inputs(logger.run_id, datasets=inputs)


def _pct(v: float) -> str:
    return f"{100 * v:.2f}%"


def result_line(name: str, cfg: Any, results: dict[str, Any]) -> str:
    """`simclr-ntxent-b128 (simclr, ntxent, batch 128, 5 epochs): linear 88.85%, kNN 85.44%;
    vs raw_pixels: linear +4.14 pts, kNN +1.37 pts; ...`: the run against each baseline."""
    what = [cfg.method.name]
    if cfg.method.name in ("simclr", "supcon"):
        what.append(cfg.loss.name)
    epochs = results.get("epochs_trained", cfg.train.epochs)  # a time budget may plan fewer
    what += [f"batch {cfg.train.global_batch}", f"{epochs:g} epochs"]
    scores = [f"{label} {_pct(results[k])}" for k, label in _METRICS if k in results]
    line = f"{name} ({', '.join(what)}): {', '.join(scores) or 'no accuracy measured'}"
    deltas = []
    for base, metrics in results.get("baselines", {}).items():
        parts = [
            f"{label} {100 * (results[k] - metrics[k]):+.2f} pts"
            for k, label in _METRICS
            if k in results and isinstance(metrics.get(k), float | int)
        ]
        if parts:
            deltas.append(f"{base}: {', '.join(parts)}")
    return line + ("; vs " + "; ".join(deltas) if deltas else "")


def describe_run(logger: Any, cfg: Any, results: dict[str, Any]) -> str:
    """The run's description: its result line, then a table of it and its baselines."""
    rows = [(f"**{cfg.run_name}**", results), *results.get("baselines", {}).items()]
    table = ["| | linear | kNN |", "|---|---|---|"]
    for label, r in rows:
        cells = [_pct(r[k]) if isinstance(r.get(k), float | int) else "-" for k, _ in _METRICS]
        table.append(f"| {label} | {' | '.join(cells)} |")
    extra = [f"{k} {_pct(results[k])}" for k in ("semi_1pct_acc", "semi_10pct_acc") if k in results]
    text = "\n".join(
        [
            result_line(cfg.run_name, cfg, results),
            "",
            *table,
            "",
            "Semi-supervised fine-tuning: " + ", ".join(extra) if extra else "",
            "Plots: `plots/curves.png`, `plots/tsne.png` (Artifacts tab).",
        ]
    )
    logger.set_tags({NOTE_TAG: text[:MAX_RUN_NOTE]})
    return text


def registered_name(cfg: Any) -> str:
    return cfg.tracking.registered_model or f"distcl-{cfg.data.dataset}-{cfg.method.name}"


def register_encoder(logger: Any, cfg: Any, results: dict[str, Any]) -> Any:
    """A new version of the registered model `registered_name(cfg)` from the encoder this run
    logged, tagged with its accuracies; None when the run is not a method run (baselines and
    sweep trials do not register), `tracking.register=false`, or no encoder was logged."""
    run = logger.client.get_run(logger.run_id)
    model_uri = run.data.tags.get("encoder_model_uri", "")
    if not (cfg.tracking.register and model_uri and run.data.tags.get("role") == "method"):
        return None
    from mlflow.exceptions import MlflowException

    client, name = logger.client, registered_name(cfg)
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(
            name,
            tags={"dataset": cfg.data.dataset, "method": cfg.method.name},
            description=f"Encoders of distcl `{cfg.method.name}` runs on {cfg.data.dataset}; "
            "one version per finished run, tagged with its linear-probe accuracy.",
        )
    tags = {k: f"{results[k]:.4f}" for k, _ in _METRICS if k in results}
    tags.update({"run_name": cfg.run_name, "loss": cfg.loss.name, "dataset": cfg.data.dataset})
    model_id = model_uri.removeprefix("models:/") if model_uri.startswith("models:/m-") else None
    with global_uri(logger.uri):  # a SQLite registry resolves models:/ globally
        version = client.create_model_version(
            name,
            source=model_uri,
            run_id=logger.run_id,
            tags=tags,
            description=result_line(cfg.run_name, cfg, results),
            model_id=model_id,
        )
    logger.set_tags({"registered_model": f"{name}/{version.version}"})
    return version


def ui_link(uri: str, experiment_id: str, run_id: str = "") -> str:
    """Where a reviewer opens the run (or the experiment's runs table with the accuracy
    columns): the server's page, or how to serve a local store."""
    path = f"#/experiments/{experiment_id}/runs" + (
        f"/{run_id}{UI_QUERY}" if run_id else f"{UI_QUERY}&viewStateShareKey={VIEW_KEY}"
    )
    if uri.startswith(("http://", "https://")):
        return f"{mask_secrets(uri).rstrip('/')}/{path}"
    return (
        f"mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000, "
        f"then open http://127.0.0.1:5000/{path}"
    )


def finish_review(logger: Any, cfg: Any, results: dict[str, Any]) -> None:
    """At the end of a run's evaluation: its description and (method runs) its registration.
    A failure here is printed, not raised: the run's figures are already logged."""
    try:
        describe_run(logger, cfg, results)
        version = register_encoder(logger, cfg, results)
        if version is not None:
            print(f"distcl: registered the encoder as {version.name} version {version.version}")
    except Exception as exc:
        print(f"distcl: MLflow review details not logged ({type(exc).__name__}: {exc})")
