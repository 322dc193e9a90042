"""Stage 1, configuration: what a run is, checked before anything expensive starts.

schema.py holds the frozen dataclasses (one comment per field), loads the shipped presets and
YAML files, applies `key.sub=value` overrides and builds a validated `Config`; names.py lists
the values each choice may take; validate.py checks every value on its own; rules.py checks
settings against each other (methods, views, queues, batch splits, labels), one home per rule;
preflight.py checks the world (CPUs, GPUs, storage, tracking server) in the driver before Ray
starts. Importing the package loads nothing from distcl outside it and no torch, so the CLI and
the sweep planner validate a config in a fraction of a second; only preflight's checks, when
called, ask torch for the GPU count and distcl.tracking whether the MLflow store is usable.
"""
