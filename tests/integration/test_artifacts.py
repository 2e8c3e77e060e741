"""Artifacts: a driver-side directory reaches a node's cache through the object store, by hash."""

from __future__ import annotations

import dataclasses
import shutil

import pytest

from rlhf_ray.models.assets import materialize
from rlhf_ray.store.artifacts import Artifact, share

pytestmark = pytest.mark.usefixtures("ray_session")


def test_published_directory_materializes_without_the_source(tmp_path):
    source = tmp_path / "classifier"
    (source / "sub").mkdir(parents=True)
    (source / "config.json").write_text('{"a": 1}')
    (source / "sub" / "weights.bin").write_bytes(bytes(range(256)) * 10)
    artifact = share(str(source))
    assert isinstance(artifact, Artifact) and artifact.nbytes == 8 + 2560
    shutil.rmtree(source)  # only the object store has it now

    first = materialize(artifact, tmp_path / "node-cache")
    assert first.startswith(str(tmp_path / "node-cache" / "artifacts" / "classifier-"))
    assert (tmp_path / "node-cache/artifacts").joinpath(
        first.rsplit("/", 1)[1], "sub/weights.bin"
    ).read_bytes() == bytes(range(256)) * 10
    assert materialize(artifact, tmp_path / "node-cache") == first  # once per node, keyed by content hash

    forged = dataclasses.replace(artifact, sha256="0" * 64)
    with pytest.raises(RuntimeError, match="hash mismatch"):
        materialize(forged, tmp_path / "other-cache")


def test_names_travel_as_names():
    assert share("tiny-random-llama") == "tiny-random-llama"  # each node builds it
    assert share("someorg/some-model") == "someorg/some-model"  # a hub id


def test_a_directory_travels_in_bounded_chunks_and_a_corrupted_copy_is_rebuilt(tmp_path, caplog):
    import logging

    from rlhf_ray.store.artifacts import fetch, publish

    source = tmp_path / "model"
    source.mkdir()
    (source / "weights.bin").write_bytes(bytes(range(256)) * 40)  # 10240 bytes
    (source / "config.json").write_text("{}")
    artifact = publish(source, chunk_bytes=1000)
    chunks = {name: len(refs) for name, _, refs in artifact.files}
    assert chunks == {"config.json": 1, "weights.bin": 11}  # one object per chunk, none whole
    copy = fetch(artifact, tmp_path / "node")
    assert (copy / "weights.bin").read_bytes() == bytes(range(256)) * 40
    with (copy / "weights.bin").open("r+b") as f:  # bit rot in the node's cache
        f.write(b"\xff")
    with caplog.at_level(logging.WARNING):
        again = fetch(artifact, tmp_path / "node")
    assert again == copy and "corrupted" in caplog.text
    assert (copy / "weights.bin").read_bytes() == bytes(range(256)) * 40


def test_a_storage_uri_carries_the_directory_instead_of_the_object_store(tmp_path):
    from rlhf_ray.store.artifacts import fetch, publish

    source = tmp_path / "model"
    (source / "sub").mkdir(parents=True)
    (source / "sub" / "w.bin").write_bytes(b"w" * 5000)
    shared = tmp_path / "shared"  # stands in for s3://, gs://, hdfs:// or NFS
    artifact = publish(source, storage=f"file://{shared}", chunk_bytes=1000)
    assert artifact.uri and all(not refs for _, _, refs in artifact.files)  # nothing in the object store
    assert (shared / "artifacts" / f"model-{artifact.sha256[:16]}" / "sub" / "w.bin").is_file()
    shutil.rmtree(source)
    copy = fetch(artifact, tmp_path / "node")
    assert (copy / "sub" / "w.bin").read_bytes() == b"w" * 5000


def test_names_in_a_forged_handle_cannot_leave_the_cache(tmp_path):
    from rlhf_ray.store.artifacts import fetch, publish

    source = tmp_path / "model"
    source.mkdir()
    (source / "a.bin").write_bytes(b"a")
    artifact = publish(source)
    ((_, size, refs),) = artifact.files
    forged = dataclasses.replace(artifact, files=(("../../escaped.bin", size, refs),))
    with pytest.raises(ValueError, match="leave"):
        fetch(forged, tmp_path / "node" / "artifacts")
    assert not (tmp_path / "escaped.bin").exists() and not (tmp_path / "node" / "escaped.bin").exists()
