"""`distcl sweep`: a Ray Tune search whose trials each run the same Ray Train job as `distcl train`.

    distcl sweep --space tune/NAME.yaml [--config PRESET] [--autoscaling] [key.sub=value ...]
    distcl sweep --resume --name NAME [--storage-path DIR]

The space YAML (format in tune/README.md) names the sampled `key.sub` values, the search
(random/grid via Tune's basic variant generator, or Optuna), ASHA early stopping on the
per-epoch `knn_acc`, and fixed overrides. Each trial (distcl.sweep.trial) runs one job through
distcl.job.driver.run_job, as `distcl train` does. The trial driver only waits on its Ray Train run, so
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
from pathlib import Path
from typing import Any

from distcl.config.schema import Config, ConfigError, build
from distcl.data.prepare import prepare_data
from distcl.report.sweep import report_sweep
from distcl.runtime.storage import write_text
from distcl.sweep import trial
from distcl.sweep.plan import cluster_now, plan_resources
from distcl.sweep.space import Space, param_space
from distcl.sweep.state import SWEEP_FILE, open_state
from distcl.tracking import core as tracking


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


def _plan(args: argparse.Namespace, state: dict, space: Space, cfg: Config, uri: str):
    """Connect to Ray, check the tracking store is reachable from the workers, and size the
    trials: (cluster, train.cpus_per_worker, trials at once)."""
    from distcl.job.preflight import check_local_tracking
    from distcl.train.loop import cluster_shape, ensure_ray

    ensure_ray()
    nodes, fits = cluster_shape(cfg)
    check_local_tracking(cfg, uri, nodes=nodes, workers_fit_here=fits)
    cluster = cluster_now(args.autoscaling or state.get("autoscaling", False))
    cpw, concurrent = plan_resources(
        cluster,
        num_workers=cfg.train.num_workers,
        cpus_per_worker=cfg.train.cpus_per_worker,
        use_gpu=cfg.train.use_gpu,
        max_concurrent=space.max_concurrent,
        num_trials=space.trial_count(),
    )
    return cluster, cpw, concurrent


def _parent_run(state: dict, space: Space, base: dict, uri: str, experiment: str, plan, folder):
    """The sweep's MLflow parent run: reopened on resume, else started (with the sweep's
    settings as params) and recorded in SWEEP_FILE."""
    if "parent_run_id" in state:
        parent = tracking.RunLogger(uri, state["parent_run_id"])
        parent.client.update_run(parent.run_id, status="RUNNING")
        print(f"distcl: resuming sweep {folder} (MLflow parent run {parent.run_id})")
        return parent
    cluster, cpw, concurrent = plan
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
        uri, experiment, state["name"], params, tags, build(base).to_yaml(), system_metrics=False
    )
    parent.log_text(state["space_text"], "space.yaml")
    state["parent_run_id"] = parent.run_id
    write_text(f"{folder}/{SWEEP_FILE}", json.dumps(state, indent=1))
    return parent


def _tuner(args, space: Space, ctx: dict, storage: str, folder: str, concurrent: int):
    """Tune's Tuner for the sweep: restored from its folder on `--resume`, else new."""
    from ray import tune

    trainable = trial.trainable(ctx)
    if args.resume:
        return tune.Tuner.restore(folder, trainable=trainable, resume_errored=True)
    return tune.Tuner(
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
        run_config=tune.RunConfig(name=ctx["name"], storage_path=storage),
    )


def run_sweep(args: argparse.Namespace) -> dict[str, Any]:
    """Start (or resume) a sweep; returns the summary with the best trial."""
    state, space, storage, folder = open_state(args)
    base_cfg = build(state["base"])
    space.check_against(state["base"])
    uri = tracking.resolve_uri(base_cfg.tracking.uri)
    experiment = tracking.experiment_name(base_cfg)
    data = prepare_data(base_cfg)  # once for every trial: sampled keys never change the data
    plan = _plan(args, state, space, base_cfg, uri)
    base = {**state["base"], "train.cpus_per_worker": plan[1], "eval.knn_every": 1}
    if space.asha:
        base["train.epochs"] = space.asha["max_t"]
    parent = _parent_run(state, space, base, uri, experiment, plan, folder)
    ctx = {
        "base": base,
        "data": data,
        "uri": uri,
        "experiment": experiment,
        "parent_run_id": parent.run_id,
        "name": state["name"],
        "train_storage": f"{folder}/train",
    }
    try:
        grid = _tuner(args, space, ctx, storage, folder, plan[2]).fit()
        summary = report_sweep(grid, space, state, base, parent, folder)
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
