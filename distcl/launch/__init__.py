"""The launch stage: `distcl launch` submits `distcl train` to an already running Ray cluster
through the Ray Jobs API (`submit.py`; the address, token auth and client in
`jobs_api.py`), streams its logs, and reports, stops or follows a
submitted job by id; starting and sizing clusters is cluster/'s business, training is the train
stage's, run on the head node by the job's entrypoint. It may import distcl.config (to check
the preset and overrides before anything is submitted) and distcl.tracking (to record the
submission), and nothing else of distcl. Import `distcl.launch.submit` directly: this package
re-exports nothing.
"""
