"""Report: what a person reads after runs finish. It owns `distcl compare` (table.py builds the
table of runs against their baselines, compare.py is the command, experiment.py writes the table
as the MLflow experiment's description) and the report a finished sweep leaves in its parent run
(sweep.py). It reads runs back through `distcl.tracking` and configs through `distcl.config`,
writes files through `distcl.runtime.storage`, and may import those three stages only (not
sweep: the sweep stage calls sweep.py); nothing in training or evaluation imports it.
"""
