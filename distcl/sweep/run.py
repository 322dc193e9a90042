"""`distcl sweep`: a Ray Tune search whose trials each run the same Ray Train job as `distcl train`.

    distcl sweep --space tune/NAME.yaml [--config PRESET] [--autoscaling] [key.sub=value ...]
    distcl sweep --resume --name NAME [--storage-path DIR]

The space YAML (format in tune/README.md) names the sampled `key.sub` values, the search
(random/grid via Tune's basic variant generator, or Optuna), ASHA early stopping on the
per-epoch `knn_acc`, and fixed overrides. The trial driver only waits on its Ray Train run, so
it asks Tune for 0.01 CPU (Tune refuses 0); its workers take `train.cpus_per_worker` each (and
one GPU each with `train.use_gpu`), and `plan_resources` derives the concurrent trials from the
cluster's CPUs and GPUs so that a trial's worker group always fits (more trials queue in Tune
rather than hang in Ray Train); on an autoscaling cluster it plans with the requested sizes.
The sweep folder may be a local path or an s3:// / gs:// URI. MLflow gets one parent run per
sweep and one child run per trial (Li et al. 2020, ASHA: arXiv:1810.05934).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from distcl.config.schema import ConfigError, build, load_yaml, parse_overrides
from distcl.runtime import checkpoint
from distcl.runtime.storage import filesystem, read_text, storage_root, write_text
from distcl.sweep.plan import TRIAL_CPU, cluster_now, plan_resources
from distcl.sweep.space import Space, load_space, param_space
from distcl.tracking import core as tracking

SWEEP_FILE = "distcl_sweep.json"  # in the sweep's folder: what --resume needs to rebuild it


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

    from distcl.evaluation.final import final_evaluation
    from distcl.train.loop import run_trainer

    torch.set_num_threads(1)
    cfg = build({**ctx["base"], **config})
    trial_id = tune.get_context().get_trial_id()
    logger = _child_run(cfg, ctx, trial_id, config)
    loop_cfg = {
        "config": cfg.to_flat(),
        **ctx["data"],
        "tracking_uri": ctx["uri"],
        "mlflow_run_id": logger.run_id,
    }
    try:
        result = run_trainer(
            cfg,
            loop_cfg,
            ctx["train_storage"],
            trial_id,
            callbacks=[_epoch_callback(cfg.train.epochs)],
        )
        with result.checkpoint.as_directory() as ckpt_dir:
            state = checkpoint.load(ckpt_dir)
        final = final_evaluation(cfg, state, ctx["data"], logger)
    except BaseException:
        logger.end("FAILED")
        raise
    scores = {k: v for k, v in final.items() if isinstance(v, float)}
    logger.end("FINISHED")
    last = {k: v for k, v in (result.metrics or {}).items() if isinstance(v, int | float)}
    tune.report(
        {
            **last,
            "epoch": cfg.train.epochs,
            **scores,
            **{f"final_{k}": v for k, v in scores.items()},
            "mlflow_run_id": logger.run_id,
        }
    )


def _trainable(ctx: dict[str, Any]):
    from ray import tune

    return tune.with_resources(tune.with_parameters(trial_fn, ctx=ctx), {"cpu": TRIAL_CPU})


def _scheduler(space: Space):
    if not space.asha:
        return None
    from ray.tune.schedulers import ASHAScheduler

    a = space.asha
    return ASHAScheduler(
        time_attr="epoch",
        max_t=a["max_t"],
        grace_period=a["grace_period"],
        reduction_factor=a["reduction_factor"],
    )


def _search_alg(space: Space, concurrent: int = 0):
    """The search algorithm, seeded by `space.seed` (None: Tune draws a fresh seed)."""
    if space.search != "optuna":
        from ray.tune.search import BasicVariantGenerator

        # grid_search entries x random samples. Tune caps concurrency only for Searchers, so the
        # generator gets it here.
        return BasicVariantGenerator(max_concurrent=concurrent, random_state=space.seed)
    try:
        import optuna  # noqa: F401
        from ray.tune.search.optuna import OptunaSearch
    except ImportError:
        raise ConfigError(
            "search: optuna needs the optuna package, which is not installed; "
            "pip install 'distcl[optuna]', or use search: random"
        ) from None
    return OptunaSearch(seed=space.seed)


def _new_state(args: argparse.Namespace) -> dict[str, Any]:
    """Everything a resume needs, from the command line (written to SWEEP_FILE)."""
    space = load_space(args.space)
    base = load_yaml(args.config or "fashion_mnist_simclr")
    base.update(space.overrides)
    base.update(parse_overrides(args.overrides))
    name = args.name or f"sweep-{Path(args.space).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    return {
        "name": name,
        "space_path": str(args.space),
        "space_text": Path(args.space).read_text(),
        "preset": args.config or "fashion_mnist_simclr",
        "base": base,
        "autoscaling": args.autoscaling,  # --resume plans for the same cluster
    }


def _sweep_dir(args: argparse.Namespace, cfg_storage: str) -> str:
    return storage_root(args.storage_path or cfg_storage)


def _find_resumable(storage: str, name: str | None) -> str:
    """The sweep folder `storage/name`, or without a name the one whose SWEEP_FILE is newest."""
    from pyarrow.fs import FileSelector, FileType

    fs, base = filesystem(storage)
    if name:
        if fs.get_file_info(f"{base}/{name}/{SWEEP_FILE}").type == FileType.File:
            return f"{storage}/{name}"
        raise ConfigError(
            f"--resume --name {name}: no sweep at {storage}/{name}; check --name and --storage-path"
        )
    folders = fs.get_file_info(FileSelector(base, allow_not_found=True))
    records = fs.get_file_info(
        [f"{d.path}/{SWEEP_FILE}" for d in folders if d.type == FileType.Directory]
    )
    found = sorted((r for r in records if r.type == FileType.File), key=lambda r: r.mtime_ns or 0)
    if not found:
        raise ConfigError(f"--resume: no sweep under {storage}; pass --storage-path and --name")
    return f"{storage}/{found[-1].path.rstrip('/').split('/')[-2]}"


def run_sweep(args: argparse.Namespace) -> dict[str, Any]:
    """Start (or resume) a sweep; returns the summary with the best trial."""
    from ray import tune

    from distcl.config.preflight import check_local_tracking
    from distcl.job import prepare_data
    from distcl.report.sweep import report_sweep
    from distcl.train.loop import cluster_shape, ensure_ray

    if args.resume:
        storage = storage_root(args.storage_path or "runs")
        sweep_dir = _find_resumable(storage, args.name)
        state = json.loads(read_text(f"{sweep_dir}/{SWEEP_FILE}"))
        space = load_space(state["space_path"], text=state["space_text"])
    else:
        state = _new_state(args)
        space = load_space(args.space)
        storage = _sweep_dir(args, str(build(state["base"]).train.storage_path))
        sweep_dir = f"{storage}/{state['name']}"
    base_cfg = build(state["base"])
    space.check_against(state["base"])
    uri = tracking.resolve_uri(base_cfg.tracking.uri)
    experiment = tracking.experiment_name(base_cfg)
    data = prepare_data(base_cfg)
    ensure_ray()
    nodes, fits = cluster_shape(base_cfg)
    check_local_tracking(base_cfg, uri, nodes=nodes, workers_fit_here=fits)
    cluster = cluster_now(args.autoscaling or state.get("autoscaling", False))
    cpw, concurrent = plan_resources(
        cluster,
        num_workers=base_cfg.train.num_workers,
        cpus_per_worker=base_cfg.train.cpus_per_worker,
        use_gpu=base_cfg.train.use_gpu,
        max_concurrent=space.max_concurrent,
        num_trials=space.trial_count(),
    )
    base = {**state["base"], "train.cpus_per_worker": cpw, "eval.knn_every": 1}
    if space.asha:
        base["train.epochs"] = space.asha["max_t"]
    if args.resume:
        parent = tracking.RunLogger(uri, state["parent_run_id"])
        parent.client.update_run(parent.run_id, status="RUNNING")
        print(f"distcl: resuming sweep {sweep_dir} (MLflow parent run {parent.run_id})")
    else:
        tags = {"role": "sweep", "sweep": state["name"], "git_commit": tracking.git_commit()}
        params = {
            "sweep.space": state["space_path"],
            "sweep.preset": state["preset"],
            **space.describe(),
            "sweep.max_concurrent_used": concurrent,
            "sweep.cpus_per_worker": cpw,
            "sweep.ray_cpus": cluster.cpus,
            "sweep.ray_gpus": cluster.gpus,
            "sweep.autoscaling": cluster.autoscaling,
            **{f"fixed.{k}": v for k, v in state["base"].items()},
        }
        parent = tracking.start_run(
            uri,
            experiment,
            state["name"],
            params,
            tags,
            build(base).to_yaml(),
            system_metrics=False,
        )
        parent.log_text(state["space_text"], "space.yaml")
        state["parent_run_id"] = parent.run_id
        write_text(f"{sweep_dir}/{SWEEP_FILE}", json.dumps(state, indent=1))
    ctx = {
        "base": base,
        "data": data,
        "uri": uri,
        "experiment": experiment,
        "parent_run_id": parent.run_id,
        "name": state["name"],
        "train_storage": f"{sweep_dir}/train",
    }
    trainable = _trainable(ctx)
    try:
        if args.resume:
            tuner = tune.Tuner.restore(sweep_dir, trainable=trainable, resume_errored=True)
        else:
            tuner = tune.Tuner(
                trainable,
                param_space=param_space(space),
                tune_config=tune.TuneConfig(
                    metric=space.metric,
                    mode=space.mode,
                    num_samples=space.num_samples,
                    scheduler=_scheduler(space),
                    search_alg=_search_alg(space, concurrent),
                    # a Searcher (Optuna) is wrapped in Tune's ConcurrencyLimiter
                    max_concurrent_trials=concurrent if space.search == "optuna" else None,
                ),
                run_config=tune.RunConfig(name=state["name"], storage_path=storage),
            )
        grid = tuner.fit()
        summary = report_sweep(grid, space, state, base, parent, sweep_dir)
    except BaseException:
        parent.end("FAILED")
        raise
    parent.end("FINISHED")
    return summary


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="distcl sweep", description=__doc__.splitlines()[0])
    p.add_argument("--space", help="search space YAML, e.g. tune/fmnist_default.yaml")
    p.add_argument("--config", default=None, help="preset name or YAML path (trials' base)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted sweep")
    p.add_argument("--name", default=None, help="sweep name (folder and MLflow parent run)")
    p.add_argument(
        "--storage-path",
        default=None,
        help="folder or s3:// / gs:// URI for sweeps (default: train.storage_path)",
    )
    p.add_argument(
        "--autoscaling",
        action="store_true",
        help="the Ray cluster adds nodes on demand: plan with the requested sizes, not its "
        "current CPUs/GPUs",
    )
    p.add_argument("--summary-json", default=None, help="write the best trial to this JSON file")
    p.add_argument("overrides", nargs="*", help="key.sub=value fixed for every trial")
    return p


def main(argv: list[str]) -> int:
    """`distcl sweep ...`; returns the exit code (2 for a config error)."""
    args = build_parser().parse_args(argv)
    if not args.resume and not args.space:
        print("distcl sweep: error: --space is required (or --resume to continue a sweep)")
        return 2
    try:
        summary = run_sweep(args)
    except ConfigError as exc:
        print(f"distcl: error: {exc}")
        return 2
    if args.summary_json:
        Path(args.summary_json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.summary_json).write_text(json.dumps(summary, indent=1, default=str))
    return 0
