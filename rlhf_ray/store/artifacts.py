"""Models reach actors without a shared disk.

No node may open a path that exists only on the driver's node. A model reference an actor gets is
either a *name* (embedded asset or hub id), which every node resolves into its own cache, or an
`Artifact`: a directory the driver published once into the Ray object store (a trained reward
classifier, a merged model, any local path), which each node copies into its own cache, keyed by
content hash, before loading it."""

from __future__ import annotations

import hashlib
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from rlhf_ray.store.checkpoint import publish_once, read_dir, temp_dir
from rlhf_ray.store.refs import is_asset_name

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Artifact:
    """A published directory: {relative path: bytes} in the object store, named by its content hash."""

    name: str  # the source directory's name, for readable cache entries and logs
    sha256: str  # over sorted (path, bytes) pairs: the node-local cache key and an integrity check
    nbytes: int
    files: object  # ray.ObjectRef -> dict[str, bytes]; the driver's handle keeps it alive for the run


ModelRef = str | Artifact


def content_hash(files: dict[str, bytes]) -> str:
    digest = hashlib.sha256()
    for name in sorted(files):
        data = files[name]
        digest.update(f"{name}\0{len(data)}\0".encode())
        digest.update(data)
    return digest.hexdigest()


def publish(directory: Path) -> Artifact:
    """Driver side: put a local directory into the object store once; actors fetch it by handle."""
    import ray

    files = read_dir(directory)
    if not files:
        raise ValueError(f"cannot publish {directory}: no files")
    artifact = Artifact(directory.name, content_hash(files), sum(map(len, files.values())), ray.put(files))
    log.info(
        "published %s (%.1f MB, sha256 %s) to the object store",
        directory,
        artifact.nbytes / 2**20,
        artifact.sha256[:12],
    )
    return artifact


def share(ref: str) -> ModelRef:
    """What actors get for a model reference: embedded assets and hub ids travel by name (each node
    resolves them itself); a local directory, which may exist only here, is published."""
    local = Path(ref).expanduser()
    return publish(local) if not is_asset_name(ref) and local.is_dir() else ref


def fetch(artifact: Artifact, root: Path) -> Path:
    """Copy an artifact into `root/<name>-<hash>` once per node: written to a temp dir and renamed,
    so concurrent actors on one node never see a half-written copy."""
    import ray

    target = root / f"{artifact.name}-{artifact.sha256[:16]}"
    if target.is_dir():
        return target
    files = ray.get(artifact.files)
    if content_hash(files) != artifact.sha256:
        raise RuntimeError(f"artifact {artifact.name} arrived corrupted (hash mismatch)")
    tmp = temp_dir(root, ".tmp-")  # the user's umask, as every other file we write
    try:
        for name, data in files.items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_bytes(data)
        publish_once(tmp, target)  # a concurrent actor on this node may have won: its copy is complete
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
