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
