"""gpu_check stage `metrics`: read the run back from the MLflow server over HTTP
($MLFLOW_TRACKING_URI). Arguments: summary.json, epochs, 1 for the dry run."""

import json
import statistics
import sys

from mlflow.tracking import MlflowClient  # reads $MLFLOW_TRACKING_URI: the HTTP server

summary, epochs, dry = json.load(open(sys.argv[1])), int(sys.argv[2]), sys.argv[3] == "1"
client, run_id = MlflowClient(), summary["mlflow_run_id"]
problems = []
try:
    run = client.get_run(run_id)
except Exception as exc:  # noqa: BLE001 - reported on the stage line
    print(f"run {run_id} not on the HTTP server (did distcl train log elsewhere?): {exc!r}"[:400])
    sys.exit(1)
hist = {
    k: client.get_metric_history(run_id, k)
    for k in ("loss", "images_per_s", "knn_acc", "gpu_peak_mem_mib")
}
steps = sorted(m.step for m in hist["loss"])
if steps != list(range(1, epochs + 1)):
    problems.append(f"loss steps {steps}, expected 1..{epochs} once each")
if run.info.status != "FINISHED":
    problems.append(f"run status {run.info.status}")
if len(hist["knn_acc"]) < epochs:
    problems.append(f"knn_acc logged {len(hist['knn_acc'])}x, expected {epochs}")
ips = [m.value for m in sorted(hist["images_per_s"], key=lambda m: m.step) if m.step > 1]
peak = max((m.value for m in hist["gpu_peak_mem_mib"]), default=None)
if peak is None and not dry:
    problems.append("gpu_peak_mem_mib not logged on CUDA")
loss = {m.step: m.value for m in hist["loss"]}
knn = max(hist["knn_acc"], key=lambda m: m.step).value if hist["knn_acc"] else float("nan")
print(
    f"run {run_id[:8]} {run.info.status}; loss once per epoch 1..{epochs} "
    f"({loss.get(1, float('nan')):.3f} -> {loss.get(epochs, float('nan')):.3f}); "
    f"images/s {statistics.median(ips) if ips else float('nan'):,.0f} (median of epochs 2+); "
    f"peak GPU memory {'n/a' if peak is None else f'{peak:,.0f} MiB'}; knn_acc {knn:.3f}"
    + ("; PROBLEMS: " + "; ".join(problems) if problems else "")
)
sys.exit(1 if problems else 0)
