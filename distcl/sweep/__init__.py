"""Sweeps: `distcl sweep`, a Ray Tune search in which every trial is one training job. It owns the
search-space format and its validation (`space`), the plan that sizes concurrent trials to the
cluster's CPUs and GPUs (`plan`), the sweep folder and what `--resume` reads back (`state`), the
trial that runs one job through distcl.job.driver.run_job into a child MLflow run (`trial`), and the
Tune run itself (`run`). It may import `job`, `config`, `tracking` and `report` (and `data` to
prepare the `.beton`s once, `train` to connect to Ray, `runtime` for storage paths); nothing
imports it but the command line.
"""
