#!/usr/bin/env bash
# GPU check for distcl: runs the product itself (`distcl prepare | train | eval`) on one GPU,
# in about 8 minutes on an H200 at most. Run from anywhere:
#   bash benchmarks/gpu_check.sh                       # on a machine with one CUDA GPU
#   GPU_CHECK_DRY_RUN=1 bash benchmarks/gpu_check.sh   # the same stages on CPU at toy sizes (CI)
# Without a CUDA GPU (and without the dry-run variable) it says so and exits 0.
#
# Stages, in order. Each prints ONE line as it finishes, flushed at once, so a timeout keeps
# what finished:   gpu_check: <stage> ok|FAILED <seconds>s <details>
#   env       torch, CUDA, GPU name, native bf16; Ray, FFCV and MLflow import.
#   data      writes a CIFAR-10-format folder of generated 32 px RGB images (10 classes, numpy),
#             then `distcl prepare --dataset cifar10` turns it into train/test .betons.
#   mlflow    `mlflow server` (SQLite store) on a free port of 127.0.0.1, healthy over HTTP.
#             It is launched before `data`, so the two overlap.
#   train     `distcl train --config cifar10_simclr_resnet18` through Ray Train: NCCL, 1 worker,
#             use_gpu, bf16, channels_last, SyncBN, gradient caching (chunk = half the batch),
#             the kNN monitor every epoch, max_failures=1. MLflow is reached only through
#             MLFLOW_TRACKING_URI=http://127.0.0.1:PORT in the environment. A watcher SIGKILLs
#             the Ray Train worker (its process title is ray::RayTrainWorker...) once
#             epoch 2 runs and a checkpoint is registered; Ray restarts the worker group and
#             the run must finish, its log saying "resumed at epoch".
#   metrics   reads the run back over HTTP: status FINISHED, `loss` logged exactly once per
#             epoch, `knn_acc`, `images_per_s` (median of epochs 2+; epoch 1 pays FFCV's numba
#             compile) and `gpu_peak_mem_mib` (required on a GPU; "n/a" on CPU).
#   eval      `distcl eval --checkpoint <the run's final checkpoint> --what knn,linear`,
#             logging into the same MLflow run.
#   teardown  stops the MLflow server (its process group) and anything else this script
#             started that is still alive (every child carries GPU_CHECK_OWNER=<work dir> in its
#             environment). An EXIT trap does the same on failure, timeout or Ctrl-C.
# Then one summary line; the exit code is non-zero when a stage failed or was skipped.
#
# Each stage has its own `timeout`, capped by what is left of GPU_CHECK_BUDGET_S (default 470 s).
# The dry run swaps ResNet-18 for small_cnn width 8 (ResNet-18 trains at ~24 images/s on a 2-core
# CPU), 1024 images x 3 epochs, train.use_gpu=false (gloo instead of NCCL; bf16, channels_last and
# sync_bn go through distcl's CPU fallbacks), 1 CPU, NUMBA_OPT=0: about 140 s on 2 cores.
# Environment: PY (interpreter, default .venv/bin/python), RAY_ADDRESS (use that Ray cluster
# instead of the one `distcl train` starts; the work dir must then be visible to it),
# GPU_CHECK_KEEP=1 (keep the work dir; it is always kept when a stage failed).
# shellcheck disable=SC2317  # stage functions are called through run_stage and the EXIT trap
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=$(command -v python3)
PY=$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")  # absolute: commands run in the work dir
BIN=$(dirname "$PY")
DISTCL=$BIN/distcl
MLFLOW=$BIN/mlflow
[ -x "$DISTCL" ] || DISTCL=$(command -v distcl)
[ -x "$MLFLOW" ] || MLFLOW=$(command -v mlflow)
export TQDM_DISABLE=1 RAY_DEDUP_LOGS=0 PYTHONUNBUFFERED=1
DRY=${GPU_CHECK_DRY_RUN:-0}
T_START=$EPOCHREALTIME
BUDGET_S=${GPU_CHECK_BUDGET_S:-470}

has_gpu=$("$PY" -c 'import torch; print(int(torch.cuda.is_available()))')
if [ "$has_gpu" != 1 ] && [ "$DRY" != 1 ]; then
  echo "gpu_check: no CUDA GPU visible to torch; nothing to check here (GPU_CHECK_DRY_RUN=1 runs the stages on CPU)"
  exit 0
fi

if [ "$DRY" = 1 ]; then
  # toy sizes: 16 steps per epoch, step lines every 4 steps so the watcher sees epoch 2 start
  N_TRAIN=1024 N_TEST=256 EPOCHS=3 BATCH=64 LOG_EVERY=4 CPUS=1
  export NUMBA_OPT=${NUMBA_OPT:-0}
  RUN_ARGS=(train.use_gpu=false model.arch=small_cnn model.width=8 model.feat_dim=0
            model.proj_hidden=64 model.proj_dim=32 train.precision=bf16
            eval.semi=false eval.tsne_points=0 eval.baselines=false tracking.log_model=false
            tracking.system_metrics=false)
  T_TRAIN=300
else
  # ResNet-18 CIFAR stem, 32 px: 50 steps of 512 per epoch, 8 epochs. Measured on an H200
  # (2026-12-04, 15 epochs then): Ray + worker start ~35 s, epoch 1 and the epoch after the
  # restart ~35 s each (FFCV's numba compile), later epochs ~7 s (4.5 s of steps at ~5,600
  # images/s, kNN and checkpoint). The final evaluation uses the driver's GPU (train.use_gpu);
  # no semi-supervised fine-tuning, baselines or t-SNE; the encoder is logged over HTTP.
  N_TRAIN=25600 N_TEST=2560 EPOCHS=8 BATCH=512 LOG_EVERY=10
  CPUS=$(( $(nproc) - 2 )); [ "$CPUS" -gt 8 ] && CPUS=8; [ "$CPUS" -lt 1 ] && CPUS=1
  RUN_ARGS=(train.use_gpu=true train.precision=bf16
            eval.semi=false eval.tsne_points=0 eval.baselines=false)
  T_TRAIN=330
fi

WORK=$(mktemp -d /tmp/gpu_check.XXXXXX)  # short: Ray's socket paths live under it
echo "gpu_check: work dir $WORK"
LOGS=$WORK/logs
mkdir -p "$LOGS"
FAILED=() SKIPPED=() OK=0
MLFLOW_PID="" TRAIN_PID="" WATCH_PID=""

# ---------- helpers ----------
elapsed() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }
left_s() { awk -v a="$T_START" -v b="$EPOCHREALTIME" -v t="$BUDGET_S" 'BEGIN { printf "%d", t - (b - a) }'; }
# the stage's own limit, capped by what the budget has left (15 s kept for the teardown)
limit() { local l; l=$(( $(left_s) - 15 )); [ "$l" -gt "$1" ] && l=$1; [ "$l" -lt 5 ] && l=5; echo "$l"; }
# Every process this script starts carries GPU_CHECK_OWNER=$WORK in its environment (passed by
# `env`, which execs, so $! of a background command is the command itself); its children inherit
# it, so leftovers are found by pid.
own_pids() {
  local f pid
  for f in /proc/[0-9]*/environ; do
    pid=${f#/proc/}; pid=${pid%/environ}
    grep -qzx "GPU_CHECK_OWNER=$WORK" "$f" 2>/dev/null && echo "$pid"
  done
  return 0
}

# run_stage NAME FUNCTION: prints the stage line; the function sets DETAIL and returns non-zero
# on failure (errexit does not apply inside a function called in a condition, so every stage
# function checks its commands itself)
run_stage() {
  local name=$1 t0=$EPOCHREALTIME rc=0
  DETAIL=""
  "$2" || rc=$?
  if [ "$rc" = 0 ]; then
    OK=$((OK + 1))
    echo "gpu_check: $name ok $(elapsed "$t0")s $DETAIL"
  else
    FAILED+=("$name")
    echo "gpu_check: $name FAILED $(elapsed "$t0")s $DETAIL"
  fi
  return "$rc"
}
skip() { SKIPPED+=("$1"); echo "gpu_check: $1 skipped (needs $2)"; }
tail_of() { tail -c 600 "$1" 2>/dev/null | tr '\n' ' ' | tr -s ' '; }

descendants() {  # PID and all its descendants, one a line
  local child
  echo "$1"
  for child in $(ps -o pid= --ppid "$1" 2>/dev/null); do descendants "$child"; done
}
describe() { local pid; for pid in "$@"; do echo -n "$pid:$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | cut -c1-50) "; done; }

stop_all() {  # SIGTERM the given pids, SIGKILL those still alive after 15 s
  [ $# -gt 0 ] || return 0
  kill -TERM "$@" 2>/dev/null || true
  for _ in $(seq 1 30); do
    kill -0 "$@" 2>/dev/null || return 0  # true while any is alive
    sleep 0.5
  done
  kill -KILL "$@" 2>/dev/null || true
}

cleanup() {  # idempotent: the teardown stage and the EXIT trap both call it
  local pgid
  for pgid in $WATCH_PID $TRAIN_PID; do  # `timeout` leads a process group
    kill -TERM -- "-$pgid" 2>/dev/null || true
  done
  WATCH_PID="" TRAIN_PID="" MLFLOW_PID=""
  # shellcheck disable=SC2046  # one pid a word
  stop_all $(own_pids)
  wait 2>/dev/null || true  # reap our background children quietly (all stopped by now)
}

on_exit() {
  local rc=$?
  cleanup
  if [ "${#FAILED[@]}" -gt 0 ] || [ "$rc" != 0 ] || [ "${GPU_CHECK_KEEP:-0}" = 1 ]; then
    echo "gpu_check: logs kept in $WORK"
  else
    rm -rf "$WORK"
  fi
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------- stages ----------
stage_env() {
  DETAIL=$(timeout "$(limit 90)" "$PY" - "$DRY" <<'EOF' 2>"$LOGS/env.err"
import sys

import ffcv, mlflow, ray, torch  # noqa: F401  (every stage needs these)

if sys.argv[1] == "1":
    print(f"torch {torch.__version__}, CPU (dry run), ray {ray.__version__}, mlflow {mlflow.__version__}")
else:
    name = torch.cuda.get_device_name(0)
    free, total = torch.cuda.mem_get_info(0)
    bf16 = "yes" if torch.cuda.is_bf16_supported() else "NO"
    nccl = torch.cuda.nccl.version()  # a tuple in recent torch, an int in old ones
    nccl = ".".join(map(str, nccl)) if isinstance(nccl, tuple) else nccl
    print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {name} x{torch.cuda.device_count()}, "
          f"{total / 2**30:.0f} GiB, bf16 native {bf16}, NCCL {nccl}, "
          f"ray {ray.__version__}, mlflow {mlflow.__version__}")
EOF
  ) || { DETAIL="$(tail_of "$LOGS/env.err")"; return 1; }
}

start_mlflow() {  # in the background, before `data`; the mlflow stage waits for its health
  PORT=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  MLFLOW_URI=http://127.0.0.1:$PORT
  mkdir -p "$WORK/mlflow"
  env GPU_CHECK_OWNER="$WORK" "$MLFLOW" server --backend-store-uri "sqlite:///$WORK/mlflow/mlflow.db" \
    --artifacts-destination "$WORK/mlflow/artifacts" --host 127.0.0.1 --port "$PORT" \
    --workers 1 >"$LOGS/mlflow.log" 2>&1 &
  MLFLOW_PID=$!
  MLFLOW_T0=$EPOCHREALTIME
}

stage_data() {
  timeout "$(limit 120)" "$PY" - "$WORK/cifar" "$N_TRAIN" "$N_TEST" <<'EOF' >"$LOGS/data.log" 2>&1 || { DETAIL="generating images: $(tail_of "$LOGS/data.log")"; return 1; }
"""A CIFAR-10-format folder (python pickles, N x 3072 rows of R, G, B planes) of generated
32 px images: each class a coloured stripe pattern of its own orientation and frequency, plus
noise and a random shift, so that the kNN monitor has something to learn."""
import pickle, sys
from pathlib import Path

import numpy as np

root, n_train, n_test = Path(sys.argv[1]) / "cifar-10-batches-py", int(sys.argv[2]), int(sys.argv[3])
root.mkdir(parents=True)
yy, xx = np.mgrid[:32, :32] / 32.0


def make(n, seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n)
    angle, freq = y * np.pi / 10, 2 + (y % 3)  # N
    phase = rng.uniform(0, 2 * np.pi, n)
    proj = np.cos(angle)[:, None, None] * xx + np.sin(angle)[:, None, None] * yy  # N x 32 x 32
    wave = np.sin(2 * np.pi * freq[:, None, None] * proj + phase[:, None, None])
    colour = np.random.default_rng(99).uniform(60, 200, (10, 3))[y]  # N x 3, per class
    x = colour[:, None, None, :] + 50 * wave[..., None] + rng.normal(0, 20, (n, 32, 32, 3))
    x = np.clip(x, 0, 255).astype(np.uint8)  # N x 32 x 32 x 3
    return x.transpose(0, 3, 1, 2).reshape(n, -1), y  # N x 3072


def dump(name, doc):
    with open(root / name, "wb") as f:
        pickle.dump(doc, f, protocol=2)


x, y = make(n_train, 0)
for b, (xs, ys) in enumerate(zip(np.array_split(x, 5), np.array_split(y, 5))):
    dump(f"data_batch_{b + 1}", {b"data": xs, b"labels": ys.tolist()})
x, y = make(n_test, 1)
dump("test_batch", {b"data": x, b"labels": y.tolist()})
dump("batches.meta", {b"label_names": [f"class{i}".encode() for i in range(10)]})
EOF
  env GPU_CHECK_OWNER="$WORK" timeout "$(limit 150)" "$DISTCL" prepare --dataset cifar10 --root "$WORK/cifar" \
    --out "$WORK/betons" --split train --split test --workers "$CPUS" >>"$LOGS/data.log" 2>&1 \
    || { DETAIL="distcl prepare: $(tail_of "$LOGS/data.log")"; return 1; }
  DETAIL="generated CIFAR-10 format -> $(grep -E ' images, [0-9]+ px' "$LOGS/data.log" | sed 's#^.*/##' | paste -sd';' - | sed 's/;/; /g')"
}

stage_mlflow() {
  local deadline=$(( $(date +%s) + $(limit 120) ))
  while ! "$PY" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1] + "/health", timeout=2)' \
      "$MLFLOW_URI" 2>/dev/null; do
    if ! kill -0 "$MLFLOW_PID" 2>/dev/null; then DETAIL="server exited: $(tail_of "$LOGS/mlflow.log")"; return 1; fi
    if [ "$(date +%s)" -ge "$deadline" ]; then DETAIL="not healthy in time: $(tail_of "$LOGS/mlflow.log")"; return 1; fi
    sleep 0.5
  done
  DETAIL="$MLFLOW_URI healthy $(elapsed "$MLFLOW_T0")s after launch (pid $MLFLOW_PID)"
}

# The watcher (a file, so that `timeout` runs it directly and leads its process group): once
# epoch 2 runs and Ray has registered a checkpoint, SIGKILL the one Ray Train worker, found by
# its process title (Ray's state API would need the dashboard, i.e. ray[default], installed).
write_watcher() {
  cat >"$WORK/watcher.py" <<'EOF'
import glob, os, re, signal, sys, time
from pathlib import Path

log, runs, owner = sys.argv[1:4]
# rank 0's lines reach the driver as "(RayTrainWorker pid=N) distcl: epoch 2/3 step 4/16 ..."
EPOCH = re.compile(r"distcl: epoch (\d+)/\d+ (step )?")


def position():
    """(epoch, in_progress) of rank 0's latest progress line, or (0, False)."""
    lines = EPOCH.findall(Path(log).read_text(errors="replace")) if os.path.exists(log) else []
    return (int(lines[-1][0]), bool(lines[-1][1])) if lines else (0, False)


def train_workers():
    """pids of live Ray Train worker processes: Ray titles each actor process
    "ray::RayTrainWorker..." (no dashboard needed, unlike the state API). Ours carry
    GPU_CHECK_OWNER in their environment; on an outside cluster (RAY_ADDRESS) the title alone."""
    found = []
    for cmd in glob.glob("/proc/[0-9]*/cmdline"):
        try:
            title = Path(cmd).read_bytes().decode(errors="replace")
            env = Path(cmd).with_name("environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if title.startswith("ray::RayTrainWorker") and (
            os.environ.get("RAY_ADDRESS") or f"GPU_CHECK_OWNER={owner}".encode() in env
        ):
            found.append(int(Path(cmd).parent.name))
    return found


# Ray writes the snapshot when it registers a checkpoint; a restart resumes from the latest one.
while not (glob.glob(f"{runs}/*/checkpoint_manager_snapshot.json") and position()[0] >= 2
           and train_workers()):
    time.sleep(0.05)  # the stage's timeout bounds this loop; the script ends it with the run
epoch, running = position()
pid = train_workers()[0]
os.kill(pid, signal.SIGKILL)
where = f"epoch {epoch}" if running else f"after epoch {epoch}"
print(f"gpu_check watcher: SIGKILLed RayTrainWorker pid {pid} in {where}", flush=True)
EOF
}

stage_train() {
  local t=$(( $(limit "$T_TRAIN") )) rc=0 resumed
  local args=(--config cifar10_simclr_resnet18 --summary-json "$WORK/summary.json"
    data.root="$WORK/cifar" data.beton_dir="$WORK/betons" data.loader_workers="$CPUS"
    train.num_workers=1 train.cpus_per_worker="$CPUS" train.precision=bf16
    train.channels_last=true train.sync_bn=true train.global_batch="$BATCH"
    train.chunk_size=$((BATCH / 2)) train.epochs="$EPOCHS" train.max_failures=1
    train.keep_checkpoints=2 train.log_every="$LOG_EVERY" train.storage_path="$WORK/runs"
    train.run_name=gpu_check optim.warmup_epochs=2 eval.knn_every=1 "${RUN_ARGS[@]}")
  # Ray's temp dir in the work dir: its processes name it, and socket paths stay short
  [ -z "${RAY_ADDRESS:-}" ] && export RAY_TMPDIR=$WORK
  write_watcher
  # `timeout` leads its own process group: distcl, the Ray it starts, their children. The cwd
  # is the work dir, so nothing a run writes by default lands in the repository.
  MLFLOW_TRACKING_URI=$MLFLOW_URI env -C "$WORK" GPU_CHECK_OWNER="$WORK" timeout -k 20 "$t" \
    "$DISTCL" train "${args[@]}" >"$LOGS/train.log" 2>&1 &
  TRAIN_PID=$!
  env GPU_CHECK_OWNER="$WORK" timeout "$t" "$PY" "$WORK/watcher.py" "$LOGS/train.log" "$WORK/runs" "$WORK" \
    >"$LOGS/watcher.log" 2>&1 &
  WATCH_PID=$!
  wait "$TRAIN_PID" || rc=$?
  TRAIN_PID=""
  kill -TERM -- "-$WATCH_PID" 2>/dev/null || true  # done by now, unless the run ended early
  wait "$WATCH_PID" 2>/dev/null || true
  WATCH_PID=""
  local killed
  killed=$(tail -n1 "$LOGS/watcher.log" | sed -n 's/^gpu_check watcher: //p')
  resumed=$(grep -o 'resumed at epoch [0-9]*, step [0-9]*' "$LOGS/train.log" | tail -n1 || true)
  if [ "$rc" = 124 ]; then  # where it was: the last progress line (earlier errors may be the kill's)
    DETAIL="timeout ${t}s; last: $(grep -E '^(\S+ )?distcl:|distcl: ' "$LOGS/train.log" | tail -n1 | sed 's/^.*distcl: //' | cut -c1-300)"
    return 1
  elif [ "$rc" != 0 ]; then
    DETAIL="exit $rc: $(grep -E 'Error|error:' "$LOGS/train.log" | tail -n3 | tr '\n' ' ' | cut -c1-400)"
    return 1
  fi
  [ -n "$killed" ] || { DETAIL="no worker was killed: $(tail_of "$LOGS/watcher.log")"; return 1; }
  [ -n "$resumed" ] || { DETAIL="$killed, but no 'resumed at epoch' in the log"; return 1; }
  [ -s "$WORK/summary.json" ] || { DETAIL="no --summary-json written"; return 1; }
  local notes
  notes=$(grep -oE 'computing in [a-z0-9]+ on [a-z]+' "$LOGS/train.log" | head -n1 || true)
  # distcl keeps plain BatchNorm at world size 1 (SyncBatchNorm needs several ranks) and says so
  grep -q 'keeping BatchNorm' "$LOGS/train.log" && notes+=", sync_bn kept BatchNorm (world size 1)"
  DETAIL="$EPOCHS epochs x $N_TRAIN images, batch $BATCH in chunks of $((BATCH / 2)); ${killed#SIGKILLed }; then $resumed; ${notes:-no precision line}"
}

stage_metrics() {
  DETAIL=$(MLFLOW_TRACKING_URI=$MLFLOW_URI timeout "$(limit 60)" "$PY" - "$WORK/summary.json" "$EPOCHS" "$DRY" <<'EOF' 2>"$LOGS/metrics.err"
import json, statistics, sys

from mlflow.tracking import MlflowClient  # reads $MLFLOW_TRACKING_URI: the HTTP server

summary, epochs, dry = json.load(open(sys.argv[1])), int(sys.argv[2]), sys.argv[3] == "1"
client, run_id = MlflowClient(), summary["mlflow_run_id"]
problems = []
try:
    run = client.get_run(run_id)
except Exception as exc:  # noqa: BLE001 - reported on the stage line
    print(f"run {run_id} not on the HTTP server (did distcl train log elsewhere?): {exc!r}"[:400])
    sys.exit(1)
hist = {k: client.get_metric_history(run_id, k)
        for k in ("loss", "images_per_s", "knn_acc", "gpu_peak_mem_mib")}
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
print(f"run {run_id[:8]} {run.info.status}; loss once per epoch 1..{epochs} "
      f"({loss.get(1, float('nan')):.3f} -> {loss.get(epochs, float('nan')):.3f}); "
      f"images/s {statistics.median(ips) if ips else float('nan'):,.0f} (median of epochs 2+); "
      f"peak GPU memory {'n/a' if peak is None else f'{peak:,.0f} MiB'}; knn_acc {knn:.3f}"
      + ("; PROBLEMS: " + "; ".join(problems) if problems else ""))
sys.exit(1 if problems else 0)
EOF
  ) && return 0
  DETAIL="${DETAIL:-$(tail_of "$LOGS/metrics.err")}"
  return 1
}

stage_eval() {
  local ckpt run_id
  ckpt=$("$PY" -c 'import json, sys; print(json.load(open(sys.argv[1]))["checkpoint"])' "$WORK/summary.json")
  run_id=$("$PY" -c 'import json, sys; print(json.load(open(sys.argv[1]))["mlflow_run_id"])' "$WORK/summary.json")
  MLFLOW_TRACKING_URI=$MLFLOW_URI env -C "$WORK" GPU_CHECK_OWNER="$WORK" \
    timeout -k 10 "$(limit 150)" "$DISTCL" eval --checkpoint "$ckpt" --what knn,linear \
    >"$LOGS/eval.log" 2>&1 \
    || { DETAIL="distcl eval: $(tail_of "$LOGS/eval.log")"; return 1; }
  grep -q "logged [0-9]* metrics to run $run_id" "$LOGS/eval.log" \
    || { DETAIL="did not log into run $run_id: $(tail_of "$LOGS/eval.log")"; return 1; }
  DETAIL="$(grep -E '^(knn_acc|linear_acc) ' "$LOGS/eval.log" | tr -s ' ' | paste -sd, -) on ${ckpt##*/}, logged to run ${run_id:0:8}"
}

stage_teardown() {
  local server stray=() alive pid
  # alive besides the MLflow server's tree: Ray or workers that outlived `distcl train`
  server=" $(descendants "$MLFLOW_PID" | tr '\n' ' ') "
  for pid in $(own_pids); do [[ $server == *" $pid "* ]] || stray+=("$pid"); done
  cleanup
  alive=$(own_pids | wc -l)
  DETAIL="MLflow server stopped ($(wc -w <<<"$server") processes); ${#stray[@]} other process(es) outlived their stage"
  [ "${#stray[@]}" -gt 0 ] && DETAIL+=" and were stopped: $(describe "${stray[@]}")"
  DETAIL+="; $alive still alive"
  [ "$alive" = 0 ]
}

# ---------- run ----------
if run_stage env stage_env; then
  start_mlflow
  data_ok=0 mlflow_ok=0
  if run_stage data stage_data; then data_ok=1; fi
  if run_stage mlflow stage_mlflow; then mlflow_ok=1; fi
  if [ "$data_ok" = 1 ] && [ "$mlflow_ok" = 1 ]; then
    run_stage train stage_train || true
  else
    skip train "data and mlflow"
  fi
  if [ -s "$WORK/summary.json" ]; then  # a run that finished, even if a train check failed
    run_stage metrics stage_metrics || true
    run_stage eval stage_eval || true
  else
    skip metrics "a finished train run"
    skip eval "a finished train run"
  fi
  run_stage teardown stage_teardown || true
else
  SKIPPED+=(data mlflow train metrics eval teardown)
fi

if [ "${#FAILED[@]}" = 0 ] && [ "${#SKIPPED[@]}" = 0 ]; then
  echo "gpu_check: summary ok $(elapsed "$T_START")s all $OK stages ok"
  exit 0
fi
echo "gpu_check: summary FAILED $(elapsed "$T_START")s $OK ok; failed: ${FAILED[*]:-none}; skipped: ${SKIPPED[*]:-none}"
exit 1
