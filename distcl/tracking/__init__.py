"""Tracking: everything distcl writes to and reads from MLflow, and the only package that imports
mlflow. It owns the run (created by the driver, logged into by id from any process), run lookup
and artifacts, the encoder as an MLflow model, and what the MLflow UI shows a reviewer; the other
stages call it through `distcl.tracking.core` (see its docstring for the modules). It may import
`distcl.config` and `distcl.runtime`, never a later stage (train, evaluation, sweep, report):
it takes a config and plain values, and the stages hand it what they measured.
"""
