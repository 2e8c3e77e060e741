"""One writer per run directory and per cache entry: advisory file locks, and leftover temp files.

A lock is `fcntl.flock` on a small file that records the holder's pid and host. The kernel drops
the lock when its process dies (even by SIGKILL), so a crashed run never leaves a stale lock; the
file itself stays (deleting a locked file would let a second process lock a fresh inode).
On NFS, flock is emulated with POSIX locks by Linux (since 2.6.12), so it also holds across hosts
that share the storage.

Temp names carry their writer (`.<name>.tmp-<host>-<pid>-<random>`), so a sweep can tell a
leftover of a dead writer from a directory another process is still filling."""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import secrets
import shutil
import socket
import time
from pathlib import Path

log = logging.getLogger(__name__)

HOLDER_WAIT_S = 0.5  # how long a refused lock waits for its holder's record to appear
STALE_AFTER_S = 3600.0  # a temp dir untouched this long, whose writer is gone, is removed
TMP_MARK = ".tmp-"


class LockHeld(Exception):
    """Another process holds the lock (its pid and host as recorded in the lock file)."""

    def __init__(self, path: Path, holder: dict):
        self.path, self.holder = path, holder
        super().__init__(f"{path} is locked by pid {holder.get('pid', '?')} on {holder.get('host', '?')}")


class FileLock:
    """An exclusive flock on `path`, held until release() (or the process ends)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.fd: int | None = None

    def acquire(self, wait: bool = False) -> "FileLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            self._flock(fd, wait)
        except BaseException:
            os.close(fd)
            raise
        record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, record, 0)
        self.fd = fd
        return self

    def _flock(self, fd: int, wait: bool) -> None:
        """Lock `fd`, or raise LockHeld naming the holder. The holder's record is written just after
        its flock (and cleared just before its release), so an empty record is read again briefly."""
        deadline = time.monotonic() + HOLDER_WAIT_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
                return
            except BlockingIOError:
                holder = read_holder(self.path)
                if holder or time.monotonic() > deadline:
                    raise LockHeld(self.path, holder) from None
                time.sleep(0.01)  # taken this instant and not yet recorded, or being released: try again

    def release(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self.fd, 0)  # no holder recorded once released
            os.close(self.fd)  # closing drops the flock
            self.fd = None

    def __enter__(self) -> "FileLock":
        return self if self.fd is not None else self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def read_holder(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text() or "{}")
    except (OSError, ValueError):
        return {}


@contextlib.contextmanager
def entry_lock(target: Path):
    """Hold the lock of cache entry `target` (a sibling `.name.lock` file: it outlives replacements
    of the entry); waits for another writer, saying once who it is."""
    lock = FileLock(target.parent / f".{target.name}.lock")
    try:
        lock.acquire()
    except LockHeld as held:
        log.info(
            "waiting for pid %s on %s, which is writing %s",
            held.holder.get("pid", "?"),
            held.holder.get("host", "?"),
            target,
        )
        lock.acquire(wait=True)
    try:
        yield lock
    finally:
        lock.release()


def temp_name(parent: Path, prefix: str) -> Path:
    """A unique sibling name that records its writer: `<prefix><host>-<pid>-<random>`."""
    host = socket.gethostname().replace("-", "_")[:40]
    return parent / f"{prefix}{host}-{os.getpid()}-{secrets.token_hex(4)}"


def _writer(name: str) -> tuple[str, int] | None:
    parts = name.split("-")
    if len(parts) < 4 or not parts[-2].isdigit():
        return None
    return parts[-3], int(parts[-2])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _newest_mtime(path: Path) -> float:
    newest = path.lstat().st_mtime
    if path.is_dir() and not path.is_symlink():
        for root, dirs, files in os.walk(path):
            for name in dirs + files:
                with contextlib.suppress(OSError):
                    newest = max(newest, os.lstat(os.path.join(root, name)).st_mtime)
    return newest


def is_stale(path: Path, max_age_s: float = STALE_AFTER_S, now: float | None = None) -> bool:
    """A temp file/dir left behind: untouched for max_age_s and its writer gone. A writer on this
    host is checked by pid; one on another host (shared storage) only by the age of its newest file."""
    try:
        age = (now or time.time()) - _newest_mtime(path)
    except OSError:
        return False  # already gone
    if age < max_age_s:
        return False
    writer = _writer(path.name)
    host = socket.gethostname().replace("-", "_")[:40]
    return writer is None or writer[0] != host or not _alive(writer[1])


def sweep_stale(parent: Path, max_age_s: float = STALE_AFTER_S) -> list[Path]:
    """Remove stale `*.tmp-*` / `*.old-*` leftovers directly under `parent`; returns what went."""
    removed = []
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(parent):
            path = Path(entry.path)
            if (
                (TMP_MARK in entry.name or ".old-" in entry.name)
                and entry.name.startswith(".")
                and is_stale(path, max_age_s)
            ):
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
                log.info("removed %s, left by a writer that is gone", path)
                removed.append(path)
    return removed
