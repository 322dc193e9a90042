"""The evaluation at the end of a run: probes of the trained encoder against its baselines.

Runs in the driver after training (on its GPU for a `train.use_gpu` run, else its CPU): kNN and
linear probe on frozen features (distcl.evaluation.probe), semi-supervised fine-tuning on 1% and
10% of the labels (distcl.evaluation.finetune), the baselines (distcl.evaluation.baselines), and
then one call to distcl.evaluation.record, which writes all of it into the run.
"""

from __future__ import annotations

from typing import Any

import torch

from distcl.config.schema import Config
from distcl.evaluation import baselines, record
from distcl.evaluation.evaluate import frozen_features, stage
from distcl.evaluation.finetune import semi_supervised
from distcl.evaluation.probe import frozen_metrics
from distcl.models.encoders import encoder_from_config
from distcl.runtime import checkpoint
from distcl.runtime.precision import to_channels_last
from distcl.tracking import core as tracking


def load_encoder(cfg: Config, state: dict, meta: dict) -> torch.nn.Module:
    """The trained encoder of a checkpoint state (keys `encoder.*` of the method)."""
    encoder = encoder_from_config(cfg.model, meta["channels"])
    encoder.load_state_dict(checkpoint.encoder_state(state["model"]))
    return to_channels_last(encoder, cfg.train.channels_last).eval()


def final_evaluation(cfg: Config, state: dict, data: dict, logger=None) -> dict[str, Any]:
    """kNN, linear probe and semi-supervised accuracy of the trained encoder and its baselines,
    logged to the run (metrics at step = epochs, plots, encoder model). A text run is evaluated
    by retrieval instead (distcl/evaluation/text_final.py). `epochs_trained` comes from the
    checkpoint: a time budget may have trained fewer epochs than `train.epochs`."""
    encoder = load_encoder(cfg, state, data["meta"])
    trained = float(state.get("epochs_trained", state.get("epoch", cfg.train.epochs)))
    if data["meta"].get("modality") == "text":
        from distcl.evaluation.text_final import text_final_evaluation

        return text_final_evaluation(cfg, encoder, data, logger, trained)
    with stage("features of the train and test splits"):
        tr_x, tr_y, te_x, te_y = frozen_features(cfg, encoder, data, data["meta"]["channels"])
    with stage("kNN" + (" and linear probe" if cfg.eval.probe else "")):
        out: dict[str, Any] = frozen_metrics(tr_x, tr_y, te_x, te_y, cfg.eval.knn_k, cfg.eval.probe)
    out["epochs_trained"] = trained
    subsets = []
    if cfg.eval.semi:
        with stage("semi-supervised fine-tuning on 1% and 10% of the labels"):
            semi, subsets = semi_supervised(cfg, encoder, data, tr_y)
        out.update(semi)
    if cfg.eval.baselines:
        uri = logger.uri if logger is not None else ""
        experiment = tracking.experiment_name(cfg)
        with stage("baselines (computed once per dataset and split, then reused)"):
            found = baselines.all_baselines(
                cfg, data, uri, experiment, exclude_run=logger.run_id if logger else ""
            )
        out["baselines"] = {b.name: b.metrics for b in found}
        out["baseline_kinds"] = {b.name: b.kind for b in found}
    if logger is not None:
        record.log_final(cfg, logger, out, subsets, encoder, data, (te_x, te_y))
    return out


def print_table(name: str, results: dict[str, Any]) -> None:
    """Run and baselines side by side, with Δ linear accuracy against raw pixels."""

    def pct(v):
        return f"{100 * v:.2f}%" if isinstance(v, float) else "-"

    rows = [(name, results)] + list(results.get("baselines", {}).items())
    ref = results.get("baselines", {}).get("raw_pixels", {}).get("linear_acc")
    print(f"\n{'method':<28} {'kNN acc':>8} {'linear acc':>11} {'Δ linear vs raw':>16}")
    for label, r in rows:
        lin = r.get("linear_acc")
        delta = f"{100 * (lin - ref):+.2f} pts" if ref is not None and lin is not None else "-"
        print(f"{label:<28} {pct(r.get('knn_acc')):>8} {pct(lin):>11} {delta:>16}")
    if "recall_at_1" in results:  # a text run: held-out gloss retrieval
        for label, r in rows:
            got = [f"@{k} {pct(r.get(f'recall_at_{k}'))}" for k in (1, 10)]
            print(f"{label:<28} retrieval recall {' '.join(got)}")
    for key in ("semi_1pct_acc", "semi_10pct_acc"):
        if key in results:
            print(f"{name}: {key} {pct(results[key])}")
    print()
