"""The layout rules of docs/ARCHITECTURE.md, checked on the source: the import table there (which
stage may import which), no import cycle between modules, short files and short functions, and a
docstring on every stage package. The table is read from the document, so the two cannot drift."""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

import distcl
from tests.source import parse

ROOT = Path(distcl.__file__).parent.parent
PKG = ROOT / "distcl"
MAX_FILE_LINES = 300
MAX_FUNCTION_LINES = 60
LOOP = ("train/loop.py", "train_loop_per_worker", 120)  # reads top to bottom, named helpers


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """distcl modules `path` imports anywhere (top level or inside functions); imports under
    `if TYPE_CHECKING:` are for annotations only and never run, so they are left out."""
    found, tree = set(), parse(path)
    typing_only = {
        id(n)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
        for stmt in block.body
        for n in ast.walk(stmt)
    }
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("distcl"):
            if node.module == "distcl":
                found |= {f"distcl.{a.name}" for a in node.names if a.name != "__version__"}
            else:
                found.add(node.module)
                found |= {f"{node.module}.{a.name}" for a in node.names}  # submodules by name
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("distcl")}
    return found


def module_graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PKG.rglob("*.py")}
    return {
        m: {t for t in imports_of(p) if t in modules and t != m and not m.startswith(t + ".")}
        for m, p in modules.items()
    }


def stage(module: str) -> str:
    """distcl.train.loop -> train; distcl.job -> job; distcl -> distcl."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "distcl"


def documented_rules() -> dict[str, set[str]]:
    """| `stage` | may import | rows of the import table in docs/ARCHITECTURE.md."""
    rules = {}
    for line in (ROOT / "docs" / "ARCHITECTURE.md").read_text().splitlines():
        m = re.match(r"\|\s*`(\w+)`\s*\|[^|]*\|\s*([^|]*)\|", line)
        if m:
            rules[m.group(1)] = set(re.findall(r"`(\w+)`", m.group(2)))
    return rules


def test_no_import_cycle_between_modules():
    graph, state, cycles = module_graph(), {}, []

    def visit(m: str, path: list[str]) -> None:
        state[m] = "open"
        for t in sorted(graph[m]):
            if state.get(t) == "open":
                cycles.append(" -> ".join(path[path.index(t) :] + [t]))
            elif t not in state:
                visit(t, path + [t])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_each_stage_imports_only_what_the_architecture_allows():
    rules = documented_rules()
    stages = {stage(m) for m in module_graph()} - {"distcl"}
    assert stages <= set(rules), f"stages missing from docs/ARCHITECTURE.md: {stages - set(rules)}"
    wrong = defaultdict(set)
    for m, targets in module_graph().items():
        for t in targets:
            s, u = stage(m), stage(t)
            if s != u and u != "distcl" and u not in rules[s]:
                wrong[f"{s} -> {u}"].add(m)
    assert not wrong, "imports the table does not allow:\n" + "\n".join(
        f"{k} (in {', '.join(sorted(v))})" for k, v in sorted(wrong.items())
    )


def test_the_rules_catch_a_forbidden_import(tmp_path, monkeypatch):
    """A config module that imports a model is reported (the rules are not vacuous)."""
    bad = PKG / "config" / "_probe_forbidden.py"
    bad.write_text("from distcl.models import methods  # noqa: F401\n")
    try:
        try:
            test_each_stage_imports_only_what_the_architecture_allows()
        except AssertionError as e:
            assert "config -> models" in str(e)
        else:
            raise AssertionError("a config -> models import went unnoticed")
    finally:
        bad.unlink()


def test_no_file_over_300_lines():
    files = [*PKG.rglob("*.py"), *(ROOT / "tests").rglob("*.py"), *(ROOT / "benchmarks").glob("*")]
    long = {
        str(f.relative_to(ROOT)): n
        for f in files
        if f.is_file() and f.suffix in (".py", ".sh")
        if (n := len(f.read_text().splitlines())) > MAX_FILE_LINES
    }
    assert not long, f"files over {MAX_FILE_LINES} lines: {long}"


def test_no_function_over_60_lines():
    long = {}
    for f in PKG.rglob("*.py"):
        rel = str(f.relative_to(PKG))
        for node in ast.walk(parse(f)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                limit = LOOP[2] if (rel, node.name) == LOOP[:2] else MAX_FUNCTION_LINES
                if n > limit:
                    long[f"{rel}:{node.name}"] = n
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"


def test_every_stage_package_says_what_it_owns():
    for init in PKG.glob("*/__init__.py"):
        doc = ast.get_docstring(parse(init)) or ""
        assert len(doc.split()) >= 15, f"{init.relative_to(ROOT)} needs a paragraph docstring"
