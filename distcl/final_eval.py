"""The evaluation at the end of a run: probes of the trained encoder against its baselines."""

from __future__ import annotations

from typing import Any

import torch

from distcl import checkpoint
from distcl.config import Config


def final_evaluation(cfg: Config, state: dict, data: dict, logger=None) -> dict[str, Any]:
    """kNN and linear probe of the trained encoder and the raw-pixel baselines, logged to the run."""
    from distcl.evaluate import extract_features, knn_accuracy, linear_probe, raw_pixels
    from distcl.models.encoders import build_encoder

    meta = data["meta"]
    encoder = build_encoder(cfg.model.arch, meta["channels"], cfg.model.width, cfg.model.cifar_stem)
    encoder.load_state_dict(checkpoint.encoder_state(state["model"]))
    torch.set_num_threads(max(1, torch.get_num_threads()))
    kw = {"channels": meta["channels"], "device": torch.device("cpu"), "num_workers": 2}
    tr_x, tr_y = extract_features(encoder, data["train_eval_path"], **kw)
    te_x, te_y = extract_features(encoder, data["test_path"], **kw)
    probe = linear_probe(tr_x, tr_y, te_x, te_y)
    out: dict[str, Any] = {
        "knn_acc": knn_accuracy(tr_x, tr_y, te_x, te_y, k=cfg.eval.knn_k),
        "linear_acc": probe.top1, "linear_top5": probe.top5, "probe_l2": probe.l2,
    }
    if cfg.eval.baselines:
        px, py = raw_pixels(data["train_eval_path"], meta["channels"])
        qx, qy = raw_pixels(data["test_path"], meta["channels"])
        raw = linear_probe(px, py, qx, qy)
        out["baselines"] = {"raw_pixels": {"knn_acc": knn_accuracy(px, py, qx, qy,
                                                                    k=cfg.eval.knn_k),
                                           "linear_acc": raw.top1}}
    if logger is not None:
        final = {k: v for k, v in out.items() if isinstance(v, float)}
        for b, r in out.get("baselines", {}).items():
            final.update({f"{b}_{k}": v for k, v in r.items()})
        logger.log_metrics(final, step=cfg.train.epochs)
    return out


def print_table(name: str, results: dict[str, Any]) -> None:
    rows = [(name, results["knn_acc"], results["linear_acc"])]
    rows += [(b, r["knn_acc"], r["linear_acc"]) for b, r in results.get("baselines", {}).items()]
    ref = results.get("baselines", {}).get("raw_pixels")
    print(f"\n{'method':<28} {'kNN acc':>8} {'linear acc':>11} {'Δ linear vs raw':>16}")
    for label, knn, lin in rows:
        delta = f"{100 * (lin - ref['linear_acc']):+.2f} pts" if ref else "-"
        print(f"{label:<28} {100 * knn:>7.2f}% {100 * lin:>10.2f}% {delta:>16}")
    print()
