"""Models reach actors without a shared disk.

No node may open a path that exists only on the driver's node. A model reference an actor gets is
either a *name* (embedded asset or hub id), which every node resolves into its own cache, or an
`Artifact`: a directory the driver published once (a trained reward classifier, a merged model,
any local path), which each node copies into its own cache, keyed by content hash, before loading
it. A published directory travels in chunks of at most CHUNK_BYTES, one object each, into the Ray
object store, or is copied once to `cluster.storage` (a pyarrow.fs URI: a path on shared disk,
s3://, gs://, hdfs://); neither side ever holds more than one chunk of it in memory.

Every cache entry written here carries CONTENT (size and sha256 of each file), checked when the
entry is reused: a corrupted entry is rebuilt, with a warning."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from rlhf_ray.store.checkpoint import atomic_write, inside, replace_dir, temp_dir
from rlhf_ray.store.locks import entry_lock
from rlhf_ray.store.refs import is_asset_name

log = logging.getLogger(__name__)

CHUNK_BYTES = 64 * 2**20
CONTENT = ".content.json"  # {"files": {name: [size, sha256]}} of a cache entry, written before it is renamed in


@dataclass(frozen=True)
class Artifact:
    """A published directory, named by its content hash."""

    name: str  # the source directory's name, for readable cache entries and logs
    sha256: str  # over sorted (path, size, bytes): the node-local cache key and an integrity check
    nbytes: int
    # [(relative path, size, [chunk ObjectRef, ...])]: the driver's handle keeps the chunks alive;
    # with `uri` set the chunk lists are empty and the files are read from there
    files: tuple
    uri: str | None = None


ModelRef = str | Artifact


def content_hash(files: dict[str, bytes]) -> str:
    digest = hashlib.sha256()
    for name in sorted(files):
        data = files[name]
        digest.update(f"{name}\0{len(data)}\0".encode())
        digest.update(data)
    return digest.hexdigest()


def _listing(directory: Path) -> list[tuple[str, Path]]:
    """(relative name, path) of every file below `directory`, sorted; links are not followed out."""
    out = []
    for root, dirs, files in os.walk(directory):
        dirs.sort()
        for name in files:
            path = Path(root, name)
            rel = path.relative_to(directory).as_posix()
            if rel != CONTENT and path.is_file():
                out.append((rel, path))
    return sorted(out)


def _chunks(path: Path, chunk_bytes: int):
    with path.open("rb") as f:
        while data := f.read(chunk_bytes):
            yield data


def publish(directory: Path, storage: str | None = None, chunk_bytes: int = CHUNK_BYTES) -> Artifact:
    """Driver side: publish a local directory once, file by file and chunk by chunk, into the object
    store (or to the `storage` URI); actors fetch it by handle."""
    import ray

    listing = _listing(directory)
    if not listing:
        raise ValueError(f"cannot publish {directory}: no files")
    digest, files, nbytes = hashlib.sha256(), [], 0
    for name, path in listing:
        size = path.stat().st_size
        digest.update(f"{name}\0{size}\0".encode())
        refs = []
        for data in _chunks(path, chunk_bytes):
            digest.update(data)
            if storage is None:
                refs.append(ray.put(data))
        files.append((name, size, tuple(refs)))
        nbytes += size
    sha = digest.hexdigest()
    uri = None
    if storage is not None:
        uri = _upload(directory, listing, storage, f"{directory.name}-{sha[:16]}", chunk_bytes)
    artifact = Artifact(directory.name, sha, nbytes, tuple(files), uri)
    log.info("published %s (%.1f MB, sha256 %s) to %s", directory, nbytes / 2**20, sha[:12], uri or "the object store")
    return artifact


def _fs(uri: str):
    from pyarrow import fs

    return fs.FileSystem.from_uri(uri)


def _upload(directory: Path, listing, storage: str, entry: str, chunk_bytes: int) -> str:
    """Copy the directory to <storage>/artifacts/<entry>/ (once: an entry with its CONTENT is complete)."""
    filesystem, root = _fs(storage)
    base = f"{root.rstrip('/')}/artifacts/{entry}"
    if filesystem.get_file_info(f"{base}/{CONTENT}").is_file:
        return f"{storage.rstrip('/')}/artifacts/{entry}"
    filesystem.create_dir(base, recursive=True)
    content = {}
    for name, path in listing:
        sha = hashlib.sha256()
        parent = f"{base}/{name}".rsplit("/", 1)[0]
        filesystem.create_dir(parent, recursive=True)
        with filesystem.open_output_stream(f"{base}/{name}") as out:
            for data in _chunks(path, chunk_bytes):
                sha.update(data)
                out.write(data)
        content[name] = [path.stat().st_size, sha.hexdigest()]
    with filesystem.open_output_stream(f"{base}/{CONTENT}") as out:  # last: its presence means complete
        out.write(json.dumps({"files": content}).encode())
    return f"{storage.rstrip('/')}/artifacts/{entry}"


def share(ref: str, storage: str | None = None) -> ModelRef:
    """What actors get for a model reference: embedded assets and hub ids travel by name (each node
    resolves them itself); a local directory, which may exist only here, is published."""
    local = Path(ref).expanduser()
    return publish(local, storage) if not is_asset_name(ref) and local.is_dir() else ref


def _read_chunks(artifact: Artifact, name: str, refs: tuple):
    import ray

    if artifact.uri is None:
        for ref in refs:
            yield ray.get(ref)
        return
    filesystem, root = _fs(artifact.uri)
    with filesystem.open_input_stream(f"{root.rstrip('/')}/{name}") as stream:
        while data := stream.read(CHUNK_BYTES):
            yield data


def fetch(artifact: Artifact, root: Path) -> Path:
    """Copy an artifact into `root/<name>-<hash>` once per node: written chunk by chunk to a temp dir
    and renamed, so concurrent actors on one node never see a half-written copy."""
    target = root / f"{artifact.name}-{artifact.sha256[:16]}"
    if reusable(target, warn=False):
        return target
    with entry_lock(target):
        if reusable(target):  # another actor on this node wrote it while we waited
            return target
        tmp = temp_dir(root, ".tmp-")  # the user's umask, as every other file we write
        try:
            digest, content = hashlib.sha256(), {}
            for name, size, refs in artifact.files:
                path = inside(tmp, name)  # a name from the handle never leaves the entry
                path.parent.mkdir(parents=True, exist_ok=True)
                digest.update(f"{name}\0{size}\0".encode())
                sha = hashlib.sha256()
                with path.open("wb") as out:
                    for data in _read_chunks(artifact, name, refs):
                        digest.update(data)
                        sha.update(data)
                        out.write(data)
                content[name] = [size, sha.hexdigest()]
            if digest.hexdigest() != artifact.sha256:
                raise RuntimeError(f"artifact {artifact.name} arrived corrupted (hash mismatch)")
            atomic_write(tmp / CONTENT, json.dumps({"files": content}).encode())
            replace_dir(tmp, target)  # a corrupted old entry is swapped out whole
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


# ---- content of cache entries ------------------------------------------------------------------

_verified: dict[str, tuple] = {}  # entry -> stat signature when last hashed in this process


def _signature(directory: Path) -> tuple:
    return tuple((name, p.stat().st_size, p.stat().st_mtime_ns) for name, p in _listing(directory))


def stamp(directory: Path) -> None:
    """Record the size and sha256 of every file of a finished cache entry (call before it is
    renamed into place, or under the entry's lock)."""
    content = {}
    for name, path in _listing(directory):
        sha = hashlib.sha256()
        for data in _chunks(path, CHUNK_BYTES):
            sha.update(data)
        content[name] = [path.stat().st_size, sha.hexdigest()]
    atomic_write(directory / CONTENT, json.dumps({"files": content}).encode())
    _verified[str(directory)] = _signature(directory)


def entry_problem(directory: Path) -> str | None:
    """Why a cache entry cannot be reused (None when every file matches its recorded sha256).
    Hashes once per process and entry while the files' sizes and mtimes stay the same."""
    try:
        content = json.loads((directory / CONTENT).read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return f"no readable {CONTENT}"
    signature = _signature(directory)
    if _verified.get(str(directory)) == signature:
        return None
    for name, (size, digest) in content.items():
        try:
            path = inside(directory, name)
        except ValueError as exc:
            return str(exc)
        if path.is_symlink() or not path.is_file() or path.stat().st_size != size:
            return f"{name} is missing or has the wrong size"
        sha = hashlib.sha256()
        for data in _chunks(path, CHUNK_BYTES):
            sha.update(data)
        if sha.hexdigest() != digest:
            return f"{name} does not match its recorded sha256"
    _verified[str(directory)] = signature
    return None


def reusable(directory: Path, warn: bool = True) -> bool:
    """An existing cache entry whose content checks out; a corrupted one is reported (it is rebuilt)."""
    if not directory.is_dir():
        return False
    problem = entry_problem(directory)
    if problem is not None and warn:
        log.warning("cache entry %s is corrupted (%s): rebuilding it", directory, problem)
    return problem is None
