"""One sweep trial: a Tune function trainable that runs one training job (distcl.job.driver.run_job,
the same path as `distcl train`) into a child MLflow run of the sweep's parent, and reports the
final evaluation to Tune. Its per-epoch reports reach ASHA through `_epoch_callback`."""

from __future__ import annotations

import json
from typing import Any

from distcl.config.schema import build
from distcl.job.driver import run_job
from distcl.sweep.plan import TRIAL_CPU
from distcl.tracking import core as tracking


def _epoch_callback(final_epoch: int):
    """TuneReportCallback that hides the last epoch's report from ASHA.

    ASHA may stop a trial on any report that carries its time attribute (`epoch`); a stop there
    would only skip the final evaluation, so that report carries `epoch` as `last_epoch` (Tune
    still sees the metric, which it requires in every report) and the trial's own final report,
    after evaluation, carries `epoch` again.
    """
    from ray.tune.integration.ray_train import TuneReportCallback

    class EpochReport(TuneReportCallback):
        def after_report(self, run_context, metrics, checkpoint):
            if metrics and metrics[0].get("epoch") == final_epoch:
                m = dict(metrics[0])
                m["last_epoch"] = m.pop("epoch")
                metrics = [m, *metrics[1:]]
            super().after_report(run_context, metrics, checkpoint)

    return EpochReport()


def _child_run(cfg, ctx: dict, trial_id: str, sampled: dict) -> tracking.RunLogger:
    """The trial's MLflow run under the sweep's parent; a resumed trial reuses its run."""
    flt = f"tags.`mlflow.parentRunId` = '{ctx['parent_run_id']}' and tags.trial_id = '{trial_id}'"
    found = tracking.find_runs(ctx["uri"], ctx["experiment"], flt)
    if found:
        return tracking.RunLogger(ctx["uri"], found[0].info.run_id)
    tags = {
        "mlflow.parentRunId": ctx["parent_run_id"],
        "role": "sweep-trial",
        "trial_id": trial_id,
        "sweep": ctx["name"],
        "method": cfg.method.name,
        "loss": cfg.loss.name,
        "dataset": cfg.data.dataset,
        "sampled": json.dumps(sampled, default=str),
    }
    return tracking.start_run(
        ctx["uri"],
        ctx["experiment"],
        f"{ctx['name']}-{trial_id}",
        cfg.to_flat(),
        tags,
        cfg.to_yaml(),
        system_metrics=False,
    )


def trial_fn(config: dict[str, Any], ctx: dict[str, Any]) -> None:
    """One Tune trial: config = the sampled `key.sub` values; ctx = the sweep's fixed facts."""
    import torch
    from ray import tune

    torch.set_num_threads(1)
    cfg = build({**ctx["base"], **config})
    trial_id = tune.get_context().get_trial_id()
    logger = _child_run(cfg, ctx, trial_id, config)
    job = run_job(
        cfg,
        ctx["data"],
        uri=ctx["uri"],
        logger=logger,
        storage=ctx["train_storage"],
        name=trial_id,
        callbacks=[_epoch_callback(cfg.train.epochs)],
    )
    scores = {k: v for k, v in job.results.items() if isinstance(v, float)}
    last = {k: v for k, v in job.train_metrics.items() if isinstance(v, int | float)}
    tune.report(
        {
            **last,
            "epoch": cfg.train.epochs,
            **scores,
            **{f"final_{k}": v for k, v in scores.items()},
            "mlflow_run_id": logger.run_id,
        }
    )


def trainable(ctx: dict[str, Any]):
    """`trial_fn` bound to the sweep's facts; its driver asks Tune for TRIAL_CPU only."""
    from ray import tune

    return tune.with_resources(tune.with_parameters(trial_fn, ctx=ctx), {"cpu": TRIAL_CPU})
