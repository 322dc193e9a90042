"""gpu_check's watcher: once epoch 2 runs and Ray has registered a checkpoint, SIGKILL the
one Ray Train worker, found by its process title (Ray's state API would need the dashboard,
i.e. ray[default], installed). Arguments: the train log, the runs folder, the owner marker."""

import glob
import os
import re
import signal
import sys
import time
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
while not (
    glob.glob(f"{runs}/*/checkpoint_manager_snapshot.json")
    and position()[0] >= 2
    and train_workers()
):
    time.sleep(0.05)  # the stage's timeout bounds this loop; the script ends it with the run
epoch, running = position()
pid = train_workers()[0]
os.kill(pid, signal.SIGKILL)
where = f"epoch {epoch}" if running else f"after epoch {epoch}"
print(f"gpu_check watcher: SIGKILLed RayTrainWorker pid {pid} in {where}", flush=True)
