"""`distcl eval`: evaluate a finished run's encoder again, or on another dataset, into that run.

    distcl eval --run RUN_ID [--what knn,linear,semi,transfer,baselines] [--dataset B]
    distcl eval --checkpoint RUN_DIR/checkpoint_.../ [--run RUN_ID] [...]

The config comes from the run's params (or the checkpoint); the encoder from the checkpoint
named in the run's `summary.json` when that path exists here (weights-only load), else from the
run's logged MLflow model. Metrics are logged into the run at step = train.epochs: `knn_acc`,
`linear_acc`, `semi_1pct_acc`, `transfer_<B>_linear_acc`, `<baseline>_linear_acc`, ...
Transfer (`--dataset B`): the encoder trained on A, frozen, probed on B's train/test splits;
images are converted to the encoder's channels and resized to its training resolution.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from distcl.config import schema as config
from distcl.config.names import TEXT_DATASETS
from distcl.config.schema import Config, ConfigError
from distcl.data.prepare import prepare_data
from distcl.evaluation import baselines, record
from distcl.evaluation.evaluate import frozen_features
from distcl.evaluation.final import load_encoder
from distcl.evaluation.finetune import semi_supervised
from distcl.evaluation.probe import frozen_metrics
from distcl.runtime import checkpoint
from distcl.tracking import core as tracking

WHAT = ("knn", "linear", "semi", "transfer", "baselines")


class InputAdapter(nn.Module):
    """Feed another dataset's images to an encoder: `B x 3 x H x W` (the `.beton`'s RGB) ->
    the encoder's channels (grey = RGB mean; grey data are stored as equal RGB planes) and side
    (bilinear, antialiased resize) -> `B x F` features."""

    def __init__(self, encoder: nn.Module, channels: int, resolution: int):
        super().__init__()
        self.encoder, self.channels, self.resolution = encoder, channels, resolution

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels == 1:
            x = x.mean(1, keepdim=True)
        if x.shape[-1] != self.resolution or x.shape[-2] != self.resolution:
            x = F.interpolate(
                x,
                size=(self.resolution, self.resolution),
                mode="bilinear",
                antialias=True,
                align_corners=False,
            )
        return self.encoder(x)


def in_channels(encoder: nn.Module) -> int:
    return next(m for m in encoder.modules() if isinstance(m, nn.Conv2d)).in_channels


def _config(flat: dict[str, Any], **overrides: Any) -> Config:
    """Rebuild the run's Config from its params (keys this version does not know are dropped)."""
    known = Config().to_flat()
    values = {k: v for k, v in flat.items() if k in known}
    values.update({k: v for k, v in overrides.items() if v not in (None, "")})
    return config.build(values)


def _run_encoder(uri: str, run: Any, cfg: Config) -> nn.Module:
    """The run's encoder: its checkpoint if reachable from here, else its logged MLflow model."""
    summary = tracking.read_artifact_text(uri, run.info.run_id, "summary.json")
    ckpt = json.loads(summary).get("checkpoint", "") if summary else ""
    if ckpt and Path(ckpt).is_dir():
        state = checkpoint.load(ckpt)
        return load_encoder(cfg, state, state["meta"])
    model_uri = run.data.tags.get("encoder_model_uri")
    if model_uri:
        print(f"distcl eval: loading the logged encoder {model_uri} (pickled: trusted stores only)")
        return tracking.load_encoder(uri, model_uri).eval()
    raise tracking.TrackingError(
        f"run {run.info.run_id} has no reachable checkpoint ({ckpt or 'no summary.json'}) and no "
        "logged encoder (tracking.log_model=false?); pass --checkpoint RUN_DIR/checkpoint_*"
    )


def _computed_baselines(cfg: Config, data: dict[str, Any], uri: str, run_id: str) -> dict:
    """`<baseline>_knn_acc` and `<baseline>_linear_acc` of the baselines that are not published
    references (computed once per dataset and split, then reused)."""
    out = {}
    experiment = tracking.experiment_name(cfg)
    for b in baselines.all_baselines(cfg, data, uri, experiment, exclude_run=run_id):
        if b.kind != "reference":
            keep = ("knn_acc", "linear_acc")
            out.update({f"{b.name}_{k}": v for k, v in b.metrics.items() if k in keep})
    return out


def _transfer(cfg: Config, encoder: nn.Module, dataset: str) -> dict[str, float]:
    """kNN and linear probe of the frozen encoder on dataset B's train and test splits."""
    flat = {**cfg.to_flat(), "data.dataset": dataset, "data.split": "train", "data.max_images": 0}
    data_b = prepare_data(_config(flat))
    adapter = InputAdapter(encoder, in_channels(encoder), cfg.data.resolution)
    metrics = frozen_metrics(*frozen_features(cfg, adapter, data_b, 3), cfg.eval.knn_k)
    return {f"transfer_{dataset}_{k}": v for k, v in metrics.items()}


def evaluate_run(
    cfg: Config,
    encoder: nn.Module,
    what: set[str],
    *,
    dataset: str = "",
    uri: str = "",
    run_id: str = "",
    logger=None,
) -> dict[str, float]:
    """The requested evaluations of `encoder`, computed as the run's final evaluation computes
    them; logged to `logger` when given."""
    if cfg.data.dataset in TEXT_DATASETS:
        return _evaluate_text(cfg, encoder, what, uri=uri, logger=logger)
    out: dict[str, float] = {}
    subsets = []
    if what & {"knn", "linear", "semi", "baselines"}:
        data = prepare_data(cfg)
        tr_x, tr_y, te_x, te_y = frozen_features(cfg, encoder, data, data["meta"]["channels"])
        if what & {"knn", "linear"}:
            out.update(frozen_metrics(tr_x, tr_y, te_x, te_y, cfg.eval.knn_k, "linear" in what))
        if "semi" in what:
            semi, subsets = semi_supervised(cfg, encoder, data, tr_y)
            out.update(semi)
        if "baselines" in what:
            out.update(_computed_baselines(cfg, data, uri, run_id))
    if "transfer" in what:
        out.update(_transfer(cfg, encoder, dataset))
    if logger is not None:
        record.log_subsets(logger, subsets)
        if out:
            logger.log_metrics(out, step=cfg.train.epochs)
    return out


def _evaluate_text(cfg: Config, encoder: nn.Module, what: set[str], *, uri: str, logger):
    """A text run's figures (distcl/evaluation/text_final.py): held-out retrieval with the
    kNN and linear probes of the categories; `baselines` adds TF-IDF and random init."""
    from distcl.evaluation import text_final

    if what - {"knn", "linear", "baselines"}:
        raise ConfigError(
            f"--what {','.join(sorted(what))}: a text run takes knn, linear and baselines "
            "(retrieval recall comes with them); semi and transfer are for images"
        )
    data = prepare_data(cfg)
    sets = text_final.eval_sets(data)
    out = text_final.encoder_metrics(cfg, encoder.eval(), sets)
    if "baselines" in what:
        experiment = tracking.experiment_name(cfg)
        for b in text_final.text_baselines(cfg, data, sets, uri, experiment):
            out.update({f"{b.name}_{k}": v for k, v in b.metrics.items() if k != "probe_l2"})
    if logger is not None:
        logger.log_metrics(out, step=cfg.train.epochs)
    return out


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="distcl eval", description=__doc__.splitlines()[0])
    p.add_argument("--run", default="", help="MLflow run id to evaluate and log into")
    p.add_argument("--checkpoint", default="", help="a checkpoint directory (holds state.pt)")
    p.add_argument("--what", default="knn,linear", help=f"comma list of: {', '.join(WHAT)}")
    p.add_argument("--dataset", default="", help="dataset B for --what transfer")
    p.add_argument(
        "--tracking-uri",
        default="",
        help="MLflow URI (default: the run's config, $MLFLOW_TRACKING_URI)",
    )
    p.add_argument("--beton-dir", default="", help="where .betons live (default: the run's)")
    p.add_argument("--root", default="", help="raw dataset folder (default: the run's)")
    return p


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    what = {w.strip() for w in args.what.split(",") if w.strip()}
    try:
        if not what or what - set(WHAT):
            raise ConfigError(f"--what {args.what!r}: choose from {', '.join(WHAT)}")
        if "transfer" in what and not args.dataset:
            raise ConfigError("--what transfer needs --dataset B (e.g. --dataset cifar10)")
        if not (args.run or args.checkpoint):
            raise ConfigError("distcl eval needs --run RUN_ID or --checkpoint DIR")
        uri = tracking.resolve_uri(args.tracking_uri)  # else $MLFLOW_TRACKING_URI, else SQLite
        data_kw = {"data.beton_dir": args.beton_dir, "data.root": args.root}
        if args.checkpoint:
            state = checkpoint.load(args.checkpoint)
            cfg = _config(state["config"], **data_kw)
            run_id = args.run or state.get("mlflow_run_id", "")
            if not args.tracking_uri:  # the run's own tracking.uri, else as resolved above
                uri = tracking.resolve_uri(cfg.tracking.uri)
            encoder = load_encoder(cfg, state, state["meta"])
        else:
            run = tracking.get_run(uri, args.run)
            cfg, run_id = _config(run.data.params, **data_kw), args.run
            encoder = _run_encoder(uri, run, cfg)
        logger = tracking.RunLogger(uri, run_id) if run_id else None
        out = evaluate_run(
            cfg,
            encoder,
            what,
            dataset=args.dataset,
            uri=uri if run_id else "",
            run_id=run_id,
            logger=logger,
        )
    except (ConfigError, tracking.TrackingError, checkpoint.CheckpointError) as exc:
        print(f"distcl eval: error: {exc}", file=sys.stderr)
        return 2
    for k, v in sorted(out.items()):
        print(f"{k:<36} {100 * v:8.2f}%" if 0 <= v <= 1 and k != "probe_l2" else f"{k:<36} {v:g}")
    print(f"distcl eval: logged {len(out)} metrics to run {run_id}" if logger else "")
    return 0
