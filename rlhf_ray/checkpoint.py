"""Atomic run-directory files: a checkpoint is complete or absent, never half-written."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path


def atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def replace_dir(tmp: Path, target: Path) -> Path:
    """Replace `target` with the fully written `tmp` (an interrupted rerun leaves no mixed dir)."""
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
    return target


def write_dir(files: dict[str, bytes], target: Path) -> Path:
    """Write {relative name: bytes} into a temp sibling of `target`, then swap it in."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    for name, data in files.items():
        (tmp / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp / name).write_bytes(data)
    return replace_dir(tmp, target)


def write_checkpoint(run_dir: Path, iteration: int, files: dict[str, bytes]) -> Path:
    """checkpoints/iter-NNNNNN written whole, then LATEST pointed at it."""
    final = write_dir(files, run_dir / "checkpoints" / f"iter-{iteration:06d}")
    atomic_write(final.parent / "LATEST", final.name.encode())
    return final


def latest_checkpoint(run_dir: Path) -> Path | None:
    pointer = run_dir / "checkpoints" / "LATEST"
    if not pointer.exists():
        return None
    path = run_dir / "checkpoints" / pointer.read_text().strip()
    return path if path.is_dir() else None


def read_dir(path: Path) -> dict[str, bytes]:
    """Every file below `path` as {relative name: bytes} (checkpoints, adapters shipped from tasks)."""
    return {str(p.relative_to(path)): p.read_bytes() for p in path.rglob("*") if p.is_file()}


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())
