"""Reference resolution is layered one way: refs <- data <- models.tiny <- assets (no import circle)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "rlhf_ray"


def _imports(module: str) -> set[str]:
    """rlhf_ray modules a file imports, at the top or inside functions."""
    tree = ast.parse((PACKAGE / module).read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("rlhf_ray"):
            out |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("rlhf_ray")}
    return out


def test_asset_resolution_has_no_import_circle():
    below_assets = {"refs.py": "rlhf_ray.refs", "data.py": "rlhf_ray.data", "models/tiny.py": "rlhf_ray.models.tiny",
                    "checkpoint.py": "rlhf_ray.checkpoint"}
    for path in below_assets:
        assert "rlhf_ray.assets" not in _imports(path), f"{path} must not import rlhf_ray.assets"
    assert "rlhf_ray.data" not in _imports("refs.py") and "rlhf_ray.models.tiny" not in _imports("data.py")
