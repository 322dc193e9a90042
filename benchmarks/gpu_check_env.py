"""gpu_check stage `env`: torch, CUDA, the GPU and NCCL; Ray, FFCV and MLflow import.
Argument: 1 for the dry run (CPU). Prints the stage line's details."""

import sys

import ffcv  # noqa: F401  (every stage needs these)
import mlflow
import ray
import torch

if sys.argv[1] == "1":
    print(
        f"torch {torch.__version__}, CPU (dry run), ray {ray.__version__}, mlflow {mlflow.__version__}"
    )
else:
    name = torch.cuda.get_device_name(0)
    free, total = torch.cuda.mem_get_info(0)
    bf16 = "yes" if torch.cuda.is_bf16_supported() else "NO"
    nccl = torch.cuda.nccl.version()  # a tuple in recent torch, an int in old ones
    nccl = ".".join(map(str, nccl)) if isinstance(nccl, tuple) else nccl
    print(
        f"torch {torch.__version__}, CUDA {torch.version.cuda}, {name} x{torch.cuda.device_count()}, "
        f"{total / 2**30:.0f} GiB, bf16 native {bf16}, NCCL {nccl}, "
        f"ray {ray.__version__}, mlflow {mlflow.__version__}"
    )
