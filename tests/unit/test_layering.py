"""The package's layers import downwards only: no import (at the top of a file or inside a
function) runs back up a layer, and the package root stays a handful of modules."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "rlhf_ray"

# Bottom to top. A module may import its own layer and any layer below; the `__init__.py`
# docstring of each folder says the same in words (docs/architecture.md draws it).
LAYERS = [
    {"errors", "batch", "process", "algo"},
    {"store"},
    {"config"},
    {"data"},
    {"models"},
    {"rewards"},
    {"envs"},
    {"actors"},
    {"runtime"},
    {"stages"},
    {"tools", "bench"},
    {"cli", "__main__", "__init__"},
]
LEVEL = {name: i for i, layer in enumerate(LAYERS) for name in layer}


def _unit(module: str) -> str:
    """rlhf_ray.runtime.driver -> runtime; rlhf_ray.errors -> errors."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module.startswith("rlhf_ray"):
            out |= {node.module} if node.module != "rlhf_ray" else {f"rlhf_ray.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("rlhf_ray")}
    return out


SOURCES = sorted(PACKAGE.rglob("*.py"))


def test_every_module_belongs_to_a_layer():
    units = {_unit("rlhf_ray." + ".".join(p.relative_to(PACKAGE).with_suffix("").parts)) for p in SOURCES}
    assert units <= set(LEVEL), f"add {sorted(units - set(LEVEL))} to LAYERS (and to docs/architecture.md)"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_run_downwards(path):
    me = _unit("rlhf_ray." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts))
    upward = sorted(m for m in _imports(path) if LEVEL[_unit(m)] > LEVEL[me])
    assert not upward, f"{path.relative_to(PACKAGE)} ({me}) imports a higher layer: {upward}"


def test_algo_imports_torch_only():
    for path in (PACKAGE / "algo").glob("*.py"):
        tree = ast.parse(path.read_text())
        roots = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        roots |= {
            n.module.split(".")[0]
            for n in ast.walk(tree)
            if isinstance(n, ast.ImportFrom) and n.module and n.level == 0
        }
        assert roots <= {"torch", "__future__", "dataclasses", "math", "typing", "collections"}, (path.name, roots)


def test_package_root_is_small():
    root = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(root) <= 8, root


def test_package_imports_sit_at_the_top_of_files():
    """rlhf_ray's own imports are at module level, where a reader sees a file's dependencies at once
    (third-party imports may stay inside functions: optional or heavy dependencies). The CLI is the
    one exception: it imports the stage, tool or planner a command runs only when it runs, so that
    `rlhf-ray config` and `--help` do not pay for torch."""
    inside = []
    for path in (p for p in SOURCES if p.name != "cli.py"):
        for fn in ast.walk(ast.parse(path.read_text())):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                inside += [
                    f"{path.relative_to(PACKAGE)}:{node.lineno}"
                    for node in ast.walk(fn)
                    if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("rlhf_ray")
                ]
    assert not inside, inside
