#!/usr/bin/env bash
# GPU check for distcl: runs the product itself (`distcl prepare | train | eval`) on one GPU,
# in about 8 minutes on an H200 at most. Run from anywhere:
#   bash benchmarks/gpu_check.sh                       # on a machine with one CUDA GPU
#   GPU_CHECK_DRY_RUN=1 bash benchmarks/gpu_check.sh   # the same stages on CPU at toy sizes (CI)
# Without a CUDA GPU (and without the dry-run variable) it says so and exits 0.
#
# Stages, in order; each prints ONE line as it finishes (`gpu_check: <stage> ok|FAILED <s>s
# <details>`), so a timeout keeps what finished: env, data (generated CIFAR-10-format images ->
# `distcl prepare`), mlflow (a server on 127.0.0.1, started before data), train (`distcl train`
# of the ResNet-18 CIFAR preset through Ray Train on NCCL, bf16, channels_last, gradient caching,
# kNN every epoch; a watcher SIGKILLs the Ray Train worker in epoch 2 and the run must resume
# and finish; MLflow only through MLFLOW_TRACKING_URI), metrics (the run read back over HTTP),
# eval (`distcl eval` of the final checkpoint), teardown (every process this script started,
# found by GPU_CHECK_OWNER=<work dir> in its environment, stopped; an EXIT trap does the same).
# Then a summary line; the exit code is non-zero when a stage failed or was skipped. The Python
# parts are benchmarks/gpu_check_*.py; benchmarks/README.md has the stages and measured figures.
#
# Each stage has its own `timeout`, capped by what is left of GPU_CHECK_BUDGET_S (default 470 s).
# The dry run: small_cnn width 8, 1024 images x 3 epochs, gloo, 1 CPU, NUMBA_OPT=0 (~80 s here).
# Environment: PY (interpreter, default .venv/bin/python), RAY_ADDRESS (use that Ray cluster;
# the work dir must then be visible to it), GPU_CHECK_KEEP=1 (keep the work dir; it is always
# kept when a stage failed).
# shellcheck disable=SC2317  # stage functions are called through run_stage and the EXIT trap
set -euo pipefail
cd "$(dirname "$0")/.."
BENCH=$(pwd)/benchmarks  # the stages' Python helpers, gpu_check_*.py
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
  DETAIL=$(timeout "$(limit 90)" "$PY" "$BENCH/gpu_check_env.py" "$DRY" 2>"$LOGS/env.err") || { DETAIL="$(tail_of "$LOGS/env.err")"; return 1; }
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
  timeout "$(limit 120)" "$PY" "$BENCH/gpu_check_data.py" "$WORK/cifar" "$N_TRAIN" "$N_TEST" >"$LOGS/data.log" 2>&1 || { DETAIL="generating images: $(tail_of "$LOGS/data.log")"; return 1; }
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
  # `timeout` leads its own process group: distcl, the Ray it starts, their children. The cwd
  # is the work dir, so nothing a run writes by default lands in the repository.
  MLFLOW_TRACKING_URI=$MLFLOW_URI env -C "$WORK" GPU_CHECK_OWNER="$WORK" timeout -k 20 "$t" \
    "$DISTCL" train "${args[@]}" >"$LOGS/train.log" 2>&1 &
  TRAIN_PID=$!
  env GPU_CHECK_OWNER="$WORK" timeout "$t" "$PY" "$BENCH/gpu_check_watcher.py" "$LOGS/train.log" "$WORK/runs" "$WORK" \
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
  DETAIL=$(MLFLOW_TRACKING_URI=$MLFLOW_URI timeout "$(limit 60)" "$PY" "$BENCH/gpu_check_metrics.py" "$WORK/summary.json" "$EPOCHS" "$DRY" 2>"$LOGS/metrics.err"
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
