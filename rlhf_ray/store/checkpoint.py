"""Atomic run-directory files: a checkpoint is complete or absent, never half-written.

Temp files and directories are created with the user's umask (tempfile.mkstemp/mkdtemp would make
them 0600/0700 and, once renamed into place, hide them from teammates on shared storage).
Each checkpoint carries MANIFEST.json (sha256 of every other file), written last: a checkpoint
whose manifest is missing or does not match its files is skipped for the previous one."""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from rlhf_ray.errors import UserError
from rlhf_ray.store.locks import sweep_stale, temp_name

log = logging.getLogger(__name__)

MANIFEST = "MANIFEST.json"
# What a PPO checkpoint needs to be resumed (its manifest must list each of them).
LEARNER_FILES = ("learner_state.json", "policy.safetensors", "optimizer.pt", "driver_state.json")
READ_TRIES = 20  # how often a reader of a live run retries a checkpoint pruned under it


def inside(root: Path, name: str) -> Path:
    """root/name for a relative name that stays below root (names come from manifests, artifacts and
    task results: `../x`, absolute paths and empty parts are refused, never followed)."""
    if not isinstance(name, str) or not name or "\\" in name or "\0" in name:
        raise ValueError(f"file name {name!r} is not a relative path")
    parts = PurePosixPath(name).parts
    if PurePosixPath(name).is_absolute() or any(p in ("..", ".", "") for p in parts) or name != "/".join(parts):
        raise ValueError(f"file name {name!r} would leave its directory: only plain relative paths are allowed")
    return root.joinpath(*parts)


def atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path.parent, f".{path.name}.tmp-")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # mode & ~umask, as open() does
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def temp_dir(parent: Path, prefix: str) -> Path:
    """A fresh, uniquely named sibling directory to fill and then rename into place (mode 0777 &
    ~umask). Leftovers of writers that died are swept from `parent` first."""
    parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(parent)
    path = temp_name(parent, prefix if prefix.endswith("tmp-") else f"{prefix}tmp-")
    path.mkdir()
    return path


def publish_once(tmp: Path, target: Path) -> None:
    """Atomically move a fully written temp dir to `target`; a concurrent winner is kept."""
    try:
        os.rename(tmp, target)
    except OSError:
        if not target.is_dir():  # targets only ever appear by rename, so an existing one is complete
            raise
        shutil.rmtree(tmp, ignore_errors=True)  # another process finished first: theirs is complete


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):  # old kernel, or a file system without it
        return False
    raise OSError(err, os.strerror(err), str(b))


_AT_FDCWD, _RENAME_EXCHANGE = -100, 2


def replace_dir(tmp: Path, target: Path) -> Path:
    """Replace `target` with the fully written `tmp`, never deleting first: the two are swapped in
    one step where the kernel can (readers always find a whole entry), else the old one is renamed
    aside and the new one renamed in; the old one is removed last."""
    old = None
    if target.is_dir() and not target.is_symlink() and _exchange(tmp, target):
        old = tmp  # now holds the previous entry
    else:
        if target.exists() or target.is_symlink():
            old = temp_name(target.parent, f".{target.name}.old-")
            os.rename(target, old)
        try:
            os.rename(tmp, target)
        except OSError:
            if old is not None and not target.exists():
                os.rename(old, target)  # put the previous entry back
            raise
    if old is not None:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)
    return target


def write_dir(files: dict[str, bytes], target: Path) -> Path:
    """Write {relative name: bytes} into a temp sibling of `target`, then swap it in."""
    tmp = temp_dir(target.parent, f".{target.name}.tmp-")
    try:
        for name, data in files.items():
            path = inside(tmp, name)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return replace_dir(tmp, target)


def write_checkpoint(run_dir: Path, iteration: int, files: dict[str, bytes], keep: int = 0) -> Path:
    """checkpoints/iter-NNNNNN written whole (manifest last), LATEST pointed at it, then all but
    the newest `keep` complete checkpoints deleted (0 keeps all)."""
    manifest = {name: hashlib.sha256(data).hexdigest() for name, data in files.items() if name != MANIFEST}
    files = {**{k: v for k, v in files.items() if k != MANIFEST}, MANIFEST: json.dumps(manifest, indent=1).encode()}
    final = write_dir(files, run_dir / "checkpoints" / f"iter-{iteration:06d}")
    atomic_write(final.parent / "LATEST", final.name.encode())
    _prune(final.parent, keep)
    return final


def _prune(root: Path, keep: int) -> None:
    if keep > 0:
        for old in sorted(root.glob("iter-*"))[:-keep]:
            shutil.rmtree(old, ignore_errors=True)


def _file(path: Path, name: str) -> bytes | None:
    """The bytes of checkpoint file `name`, None when it is absent (or removed while being read)."""
    file = path / name
    try:
        return None if file.is_symlink() else file.read_bytes()
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return None


def files_problem(read: Callable[[str], bytes | None]) -> str | None:
    """Why a checkpoint whose files `read(name)` returns (None: absent) cannot be trusted; None when
    every file matches its manifest."""
    raw = read(MANIFEST)
    if raw is None:
        return "no MANIFEST.json (written last: the checkpoint is incomplete)"
    try:
        manifest = json.loads(raw)
    except ValueError:
        return "MANIFEST.json is not valid JSON"
    if not isinstance(manifest, dict):
        return "MANIFEST.json is not a {file: sha256} map"
    if missing := [name for name in LEARNER_FILES if name not in manifest]:
        return f"MANIFEST.json does not list {', '.join(missing)} (a checkpoint needs them)"
    for name, digest in manifest.items():
        try:
            inside(Path("."), name)
        except ValueError as exc:
            return f"MANIFEST.json: {exc}"
        data = read(name)
        if data is None:
            return f"{name} is missing"
        if hashlib.sha256(data).hexdigest() != digest:
            return f"{name} does not match its sha256 in MANIFEST.json (truncated or corrupt)"
    return None


def checkpoint_problem(path: Path) -> str | None:
    """Why the checkpoint at `path` cannot be trusted (None when every file matches its manifest).
    A checkpoint deleted while it is read (a live run pruning it) is missing files: never an error."""
    return files_problem(lambda name: _file(path, name))


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest checkpoint that passes its manifest check; broken newer ones are skipped with a
    warning (one a live run pruned while it was read, without one: it is simply gone)."""
    for path in sorted((run_dir / "checkpoints").glob("iter-*"), reverse=True):
        problem = checkpoint_problem(path)
        if problem is None:
            return path
        if path.is_dir():
            log.warning("skipping checkpoint %s: %s", path, problem)
        else:
            log.info("checkpoint %s was pruned while it was read: taking an older one", path)
    return None


def read_latest(run_dir: Path, tries: int = READ_TRIES) -> tuple[Path, dict[str, bytes]] | None:
    """The newest intact checkpoint read whole into memory and checked against its manifest there,
    for readers of a run that may still be writing (eval, generate, report): a checkpoint pruned
    under the reader is passed over for the newest intact one, never half-read. None: no intact one."""
    seen = None
    for _ in range(tries):
        paths = sorted((run_dir / "checkpoints").glob("iter-*"), reverse=True)
        if not paths or paths == seen:
            return None  # none, or every one is broken and none came or went while they were read
        seen = paths
        for path in paths:
            try:
                files = read_dir(path)
            except (FileNotFoundError, NotADirectoryError):
                files = {}  # pruned while it was read
            problem = files_problem(files.get)
            if problem is None:
                return path, files
            if path.is_dir():
                log.warning("skipping checkpoint %s: %s", path, problem)
            else:
                log.info("checkpoint %s was pruned while it was read: taking an older one", path)
    raise UserError(
        f"{run_dir}: its checkpoints were replaced faster than they could be read ({tries} tries): try again"
    )


def read_dir(path: Path) -> dict[str, bytes]:
    """Every file below `path` as {relative name: bytes} (checkpoints, adapters shipped from tasks)."""
    return {str(p.relative_to(path)): p.read_bytes() for p in path.rglob("*") if p.is_file()}


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def check_restorable(path: Path, critic: bool) -> None:
    """A checkpoint the learner can resume from: every file present, and a value head when the
    run trains a critic (resuming GAE with a freshly initialised critic would be silently wrong)."""
    from safetensors import safe_open

    missing = [name for name in LEARNER_FILES if not (path / name).is_file()]
    if missing:
        raise UserError(f"checkpoint {path} lacks {', '.join(missing)}: it was not written by a PPO run")
    if critic:
        with safe_open(str(path / "policy.safetensors"), framework="pt") as f:
            if not any(k.startswith("value_head.") for k in f.keys()):
                raise UserError(
                    f"checkpoint {path} has no value head but algo.advantage=gae needs one: "
                    "resume it with the advantage estimator it was trained with"
                )
