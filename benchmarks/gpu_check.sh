#!/usr/bin/env bash
# GPU check for distcl, under 5 minutes on one GPU. Run from the repository root:
#   bash benchmarks/gpu_check.sh            # PY=path/to/python to pick the interpreter
#   GPU_CHECK_DRY_RUN=1 bash benchmarks/gpu_check.sh   # steps 2-4 at toy sizes on CPU, eager only
#
# 1. Tests: tests/losses, tests/models, tests/test_gradcache.py, tests/test_dist.py and
#    tests/test_optim.py with -m "not slow" (no Ray, no servers). No test in tests/ targets CUDA
#    yet (none creates a cuda tensor), so this step checks that the GPU machine's install imports
#    and computes correctly; the GPU work is steps 2-4.
# 2. NT-Xent (distcl.losses.ntxent_loss, fp32, dim 128) forward + backward at 2N = 8k, 32k, 64k
#    rows on the GPU: milliseconds per step and peak GPU memory.
# 3. The FFCV loader at batch 1024 (two 32 px views, crop + flip + jitter) on a synthetic RGB
#    .beton, views moved to the GPU and normalised: images/s after the compile epoch.
# 4. One SimCLR step of ResNet-50 at 224 px (batch 128 x 2 views, SGD with momentum, NT-Xent T=0.2),
#    bf16 autocast + channels_last, eager and with torch.compile: images/s.
# It prints one table at the end. Without a GPU it says so, skips steps 2-4 and exits 0.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
export TQDM_DISABLE=1
DRY=${GPU_CHECK_DRY_RUN:-0}

has_gpu=$("$PY" -c 'import torch; print(int(torch.cuda.is_available()))')
if [ "$has_gpu" != 1 ] && [ "$DRY" != 1 ]; then
  echo "gpu_check: no CUDA GPU visible to torch ($("$PY" -c 'import torch; print(torch.__version__)'));"
  echo "gpu_check: skipping the tests and the GPU benchmarks (nothing to check here)."
  exit 0
fi

test_status=skipped
if [ "$DRY" != 1 ]; then
  echo "== step 1: device-independent fast tests"
  if timeout 150 "$PY" -m pytest -q -x -m "not slow" tests/losses tests/models \
      tests/test_gradcache.py tests/test_dist.py tests/test_optim.py; then
    test_status=passed
  else
    test_status="FAILED (exit $?)"
  fi
fi

echo "== steps 2-4: NT-Xent, loader, ResNet-50 step"
TEST_STATUS="$test_status" DRY="$DRY" timeout 240 "$PY" -u - <<'EOF'
import os, statistics, tempfile, time
from pathlib import Path

import numpy as np
import torch

from distcl.losses import ntxent_loss

dry = os.environ["DRY"] == "1"
dev = torch.device("cpu" if dry else "cuda")
rows_list = (256, 512) if dry else (8192, 32768, 65536)
table = [("tests (-m 'not slow')", os.environ["TEST_STATUS"], "")]


def sync():
    if dev.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, reps, warmup=2):
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


# ----- 2. NT-Xent -----
print("ntxent ...")
for rows in rows_list:
    n = rows // 2
    za = torch.randn(n, 128, device=dev, requires_grad=True)
    zb = torch.randn(n, 128, device=dev, requires_grad=True)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    sec = timed(lambda: ntxent_loss([za, zb], temperature=0.2).backward(), reps=5)
    mem = torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda" else float("nan")
    table.append((f"ntxent fwd+bwd 2N={rows}", f"{sec * 1e3:.2f} ms", f"peak {mem:.0f} MiB"))

# ----- 3. loader -----
print("loader ...")
from distcl.data.beton import write_beton
from distcl.data.loader import ViewSpec, split_batch, to_float, train_loader
from distcl.data.sources import ArraySource

n_img, batch = (512, 128) if dry else (51200, 1024)
rng = np.random.default_rng(0)
src = ArraySource("synthetic", "train", rng.integers(0, 256, (n_img, 32, 32, 3), np.uint8),
                  rng.integers(0, 10, n_img).astype(np.int64), 10)
with tempfile.TemporaryDirectory() as tmp:
    path = Path(tmp) / "synthetic-train.beton"
    write_beton(src, path)
    loader = train_loader(path, batch_size=batch, views=2, spec=ViewSpec(32), seed=0,
                          distributed=False, num_workers=os.cpu_count() or 1)

    def epoch():
        for b in loader:
            views, _ = split_batch(b)
            [to_float(v, 3, dev) for v in views]

    sec = timed(epoch, reps=2, warmup=1)  # the warm-up epoch pays numba's compile
    table.append((f"FFCV loader batch {batch}, 2 views 32 px", f"{n_img / sec:,.0f} images/s",
                  f"{os.cpu_count()} loader threads"))

# ----- 4. ResNet-50 SimCLR step -----
print("resnet50 step ...")
import torchvision

res, bs = (64, 4) if dry else (224, 128)
enc = torchvision.models.resnet50(weights=None)
enc.fc = torch.nn.Sequential(torch.nn.Linear(2048, 2048), torch.nn.ReLU(), torch.nn.Linear(2048, 128))
enc = enc.to(dev).to(memory_format=torch.channels_last)
opt = torch.optim.SGD(enc.parameters(), lr=0.1, momentum=0.9)
views = [torch.randn(bs, 3, res, res, device=dev).to(memory_format=torch.channels_last)
         for _ in range(2)]
bf16 = dev.type == "cuda" and torch.cuda.is_bf16_supported()


def make_step(model):
    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            z = model(torch.cat(views)).float()
        ntxent_loss(list(z.chunk(2)), temperature=0.2).backward()
        opt.step()
    return step


reps = 2 if dry else 10
for name, model in (("eager", enc), ("torch.compile", None)):
    if model is None:
        if dry:  # inductor's CPU compile of ResNet-50 takes minutes; not what the dry run checks
            continue
        if not hasattr(torch, "compile"):
            table.append(("resnet50 step, torch.compile", "unavailable", ""))
            continue
        try:
            model = torch.compile(enc)
            t0 = time.perf_counter()
            make_step(model)()
            sync()
            note = f"compile {time.perf_counter() - t0:.0f} s"
        except Exception as exc:  # report, keep the table
            table.append(("resnet50 step, torch.compile", "failed", repr(exc)[:60]))
            continue
    else:
        note = ""
    sec = timed(make_step(model), reps=reps, warmup=2)
    prec = "bf16" if bf16 else "fp32"
    table.append((f"resnet50 {res}px SimCLR step, {name}", f"{2 * bs / sec:,.0f} images/s",
                  f"batch {bs} x 2 views, {prec}, channels_last {note}".strip()))

name = torch.cuda.get_device_name(0) if dev.type == "cuda" else "CPU (dry run, toy sizes)"
print(f"\ngpu_check on {name}, torch {torch.__version__}")
w = max(len(r[0]) for r in table)
for check, value, note in table:
    print(f"  {check:<{w}}  {value:>18}  {note}")
EOF
