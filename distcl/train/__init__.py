"""The Ray Train worker: what runs on every rank of a training run, from the first step to the
last report. loop.py holds `train_loop_per_worker`, read top to bottom, and the driver's side
(`run_trainer`, `ensure_ray`); worker.py builds a rank's method, optimizer, loader and resume
state; step.py is one forward-vote-backward step under DDP; gradcache.py splits its backward
into chunks; optim.py holds LARS, the parameter groups and the LR schedule; budget.py plans
`train.time_budget_s`; epoch_end.py reports an epoch with its checkpoint. It may import
`config`, `runtime`, `data`, `models`, `losses`, `evaluation` (only `evaluate.knn_monitor`, the
kNN monitor) and `tracking` (rank 0's MLflow logger). Nothing is re-exported here: import the
module that owns a name.
"""
