"""Device audit of the code that runs in a training worker (CUDA-only bugs, caught on the CPU).

A tensor factory without `device=` makes a CPU tensor. On a GPU worker, combining it with CUDA
tensors crashes ("Expected all tensors to be on the same device"), as `loss_sum` in the training
loop did on the first GPU step. This test parses every module a worker runs and fails on any
`torch.<factory>(...)` call without `device=` that is not listed below with its reason. A new
one must either pass `device=` or be added here with the reason it is safe.
"""

from __future__ import annotations

import ast
from collections import Counter
from pathlib import Path

import distcl
from tests.source import parse

PKG = Path(distcl.__file__).parent
FACTORIES = {
    "zeros", "ones", "empty", "full", "tensor", "as_tensor", "scalar_tensor", "arange", "eye",
    "linspace", "logspace", "rand", "randn", "randint", "randperm", "empty_strided",
    "tril_indices", "triu_indices",
}  # fmt: skip
# Modules a Ray Train worker imports and runs: the loop, the step, the methods and losses, the
# kNN monitor, checkpoints, precision, the optimizers and the loaders.
WORKER_MODULES = [
    "train/loop.py", "train/step.py", "runtime/dist.py", "train/gradcache.py",
    "evaluation/evaluate.py", "runtime/checkpoint.py", "runtime/precision.py", "train/optim.py",
    "data/loader.py", "data/torch_loader.py",
    *sorted(str(p.relative_to(PKG)) for p in (PKG / "losses").glob("*.py")),
    *sorted(str(p.relative_to(PKG)) for p in (PKG / "models").glob("*.py")),
]  # fmt: skip
STATE_IN_INIT = "module state made in __init__ moves with model.to(device)"
ALLOWED = {  # (module, qualified function, factory): (count, why it is safe)
    ("runtime/checkpoint.py", "rng_state", "tensor"): (
        1,
        "RNG states are CPU tensors by definition",
    ),
    ("runtime/precision.py", "_bf16_supported_cached", "ones"): (1, "the CPU bf16 probe"),
    ("losses/logistic.py", "LogisticLoss.__init__", "tensor"): (2, STATE_IN_INIT),
    ("models/moco.py", "KeyQueue.__init__", "randn"): (1, STATE_IN_INIT),
    ("models/moco.py", "KeyQueue.__init__", "zeros"): (1, STATE_IN_INIT),
    ("models/swav.py", "SwAV.__init__", "zeros"): (3, STATE_IN_INIT),
    ("models/text.py", "TextEncoder.__init__", "zeros"): (1, STATE_IN_INIT),  # positions
}


def factory_calls(module: str) -> Counter:
    """(module, qualified function, factory) -> number of device-less factory calls."""
    found: Counter = Counter()
    scope: list[str] = []

    class Visitor(ast.NodeVisitor):
        def _scoped(self, node: ast.AST) -> None:
            scope.append(node.name)  # type: ignore[attr-defined]
            self.generic_visit(node)
            scope.pop()

        visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = _scoped

        def visit_Call(self, node: ast.Call) -> None:
            f = node.func
            if (
                isinstance(f, ast.Attribute)
                and isinstance(f.value, ast.Name)
                and f.value.id == "torch"
                and f.attr in FACTORIES
                and not any(k.arg == "device" for k in node.keywords)
            ):
                found[(module, ".".join(scope) or "<module>", f.attr)] += 1
            self.generic_visit(node)

    Visitor().visit(parse(PKG / module))
    return found


def test_worker_code_makes_no_tensor_on_an_implicit_device():
    found: Counter = Counter()
    for module in WORKER_MODULES:
        found += factory_calls(module)
    unexpected = {key: n for key, n in found.items() if key not in ALLOWED or n > ALLOWED[key][0]}
    assert not unexpected, (
        "tensor factories without device= in worker code (pass device=..., or add them to "
        f"ALLOWED with the reason): {unexpected}"
    )
    stale = sorted(key for key in ALLOWED if key not in found)
    assert not stale, f"ALLOWED names calls that are gone; remove them: {stale}"


def test_the_audit_sees_a_device_less_factory(tmp_path, monkeypatch):
    (tmp_path / "probe.py").write_text(
        "import torch\n"
        "def loop(device):\n"
        "    a = torch.zeros((), dtype=torch.float64)\n"
        "    b = torch.zeros((), device=device)\n"
        "    return a + b\n"
    )
    monkeypatch.setattr(f"{__name__}.PKG", tmp_path)
    assert factory_calls("probe.py") == Counter({("probe.py", "loop", "zeros"): 1})


def test_the_final_evaluation_uses_the_gpu_only_for_gpu_runs(monkeypatch):
    """On an H200 the final evaluation's features ran on the driver's CPU and did not finish in
    80 s; they now run on the driver's GPU for a `train.use_gpu` run (3.1 s there). A CPU run,
    or a driver without CUDA, keeps the CPU and the bf16 decision follows the device."""
    import torch

    from distcl.evaluation.evaluate import extract_features, frozen_feature_kwargs

    assert frozen_feature_kwargs("bf16", 3, use_gpu=True)["device"].type == (
        "cuda" if torch.cuda.is_available() else "cpu"
    )
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (9, 0))
    gpu = frozen_feature_kwargs("auto", 3, use_gpu=True)
    assert gpu["device"] == torch.device("cuda") and gpu["use_bf16"] is True
    cpu = frozen_feature_kwargs("fp32", 3, use_gpu=False)
    assert cpu["device"] == torch.device("cpu") and cpu["use_bf16"] is False
    monkeypatch.undo()
    # extract_features moves the encoder to its device and back: the caller's module stays put
    enc = torch.nn.Linear(2, 2)
    with monkeypatch.context() as m:
        m.setattr("distcl.evaluation.evaluate.eval_loader", lambda *a, **k: [])
        m.setattr(torch, "cat", lambda xs: xs)
        seen = []
        m.setattr(torch.nn.Module, "to", lambda self, d: seen.append(str(d)) or self)
        extract_features(enc, "unused", channels=1, device=torch.device("meta"))
    assert seen == ["meta", "cpu"]
