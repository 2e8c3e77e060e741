"""Atomic run-directory files: a checkpoint is complete or absent, never half-written.

Temp files and directories are created with the user's umask (tempfile.mkstemp/mkdtemp would make
them 0600/0700 and, once renamed into place, hide them from teammates on shared storage)."""

from __future__ import annotations

import json
import os
import secrets
import shutil
from pathlib import Path


def _temp_name(parent: Path, prefix: str) -> Path:
    return parent / f"{prefix}{secrets.token_hex(6)}"


def atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(path.parent, f".{path.name}.")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # mode & ~umask, as open() does
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def temp_dir(parent: Path, prefix: str) -> Path:
    """A fresh sibling directory to fill and then rename into place (mode 0777 & ~umask)."""
    parent.mkdir(parents=True, exist_ok=True)
    path = _temp_name(parent, prefix)
    path.mkdir()
    return path


def publish_once(tmp: Path, target: Path) -> None:
    """Atomically move a fully written temp dir to `target`; a concurrent winner is kept."""
    try:
        os.rename(tmp, target)
    except OSError:
        if not (target / "config.json").exists():
            raise
        shutil.rmtree(tmp, ignore_errors=True)  # another process finished first: theirs is complete


def replace_dir(tmp: Path, target: Path) -> Path:
    """Replace `target` with the fully written `tmp` (an interrupted rerun leaves no mixed dir)."""
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
    return target


def write_dir(files: dict[str, bytes], target: Path) -> Path:
    """Write {relative name: bytes} into a temp sibling of `target`, then swap it in."""
    tmp = temp_dir(target.parent, f".{target.name}.tmp-")
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
