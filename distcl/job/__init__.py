"""One training job, end to end, as the driver runs it: the checks of the world before anything
expensive starts (`preflight`: CPUs and GPUs, the checkpoint folder, the MLflow store and whether
every node can reach it), then data, the MLflow run, Ray Train, the final evaluation and the
logged result (`driver`: `fit` for `distcl train`, `run_job` which each sweep trial also calls).
It may import every stage below it: config, runtime, data, models, losses, train, evaluation,
tracking and report."""
