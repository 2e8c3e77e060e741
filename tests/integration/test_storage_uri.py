"""cluster.storage: the PPO stage publishes local model directories to a pyarrow.fs URI, where the
actors read them, instead of the Ray object store. A file:// URI under tmp_path stands in for
shared storage (s3://, gs://, hdfs://, a mount every node has)."""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

import pytest

from rlhf_ray.cli import main
from rlhf_ray.config.load import load_config
from rlhf_ray.errors import ConfigError
from rlhf_ray.runtime.metrics import read_metrics
from rlhf_ray.stages.common import DONE
from rlhf_ray.store.artifacts import CONTENT


def files_of(directory: Path) -> dict[str, bytes]:
    """The model's files; CONTENT is the record (size, sha256) of them that every cache entry carries."""
    files = {p.relative_to(directory).as_posix(): p.read_bytes() for p in directory.rglob("*") if p.is_file()}
    files.pop(CONTENT, None)
    return files


@pytest.mark.slow
def test_a_reward_model_directory_reaches_the_scorer_through_the_storage_uri(ray_session, tmp_path, tiny_classifier):
    reward = tmp_path / "reward-model"
    shutil.copytree(tiny_classifier, reward)
    # a file of its own: a content hash no earlier run has, so the node cache cannot already hold it
    (reward / "NOTE.txt").write_text(f"published through cluster.storage, run {uuid.uuid4()}\n")
    storage = tmp_path / "shared"
    run = tmp_path / "run"
    args = ["--config", "configs/smoke.yaml", "--run-dir", str(run), f"reward.model={reward}"]
    assert main(["ppo", *args, f"cluster.storage=file://{storage}"]) == 0
    entries = sorted((storage / "artifacts").iterdir()) if (storage / "artifacts").is_dir() else []
    node_cache = load_config("configs/smoke.yaml").cache_dir() / "artifacts"
    try:
        assert [r["iteration"] for r in read_metrics(run / "metrics.jsonl")] == [1, 2] and (run / DONE).exists()
        (entry,) = entries  # <storage>/artifacts/<name>-<content hash>/, complete with its CONTENT record
        assert entry.name.startswith("reward-model-") and files_of(entry) == files_of(reward)
        assert set(json.loads((entry / CONTENT).read_text())["files"]) == set(files_of(reward))
        # The scorer's copy in its node's cache: the handle it got names no object-store chunks, so
        # it was read from the storage URI.
        assert files_of(node_cache / entry.name) == files_of(reward)
    finally:  # the user's cache keeps no entry of this test's one-off model
        for entry in entries:
            shutil.rmtree(node_cache / entry.name, ignore_errors=True)


@pytest.mark.parametrize(
    "storage, ok",
    [
        ("file:///srv/shared", True),
        ("/srv/shared", True),
        ("s3://bucket/rlhf", True),  # not contacted when the config is read (S3 would look up the region)
        ("gs://bucket/rlhf", True),
        ("hdfs://namenode:8020/rlhf", True),
        ("shared/relative", False),
        ("~/shared", False),
        ("file://relative", False),
        ("ftp://host/x", False),
        ("s3:///no-bucket", False),
    ],
)
def test_storage_must_be_a_uri_or_an_absolute_path(storage, ok):
    overrides = [f"cluster.storage={storage}"]
    if ok:
        assert load_config("configs/smoke.yaml", overrides).cluster.storage == storage
    else:
        with pytest.raises(ConfigError, match="cluster.storage") as err:
            load_config("configs/smoke.yaml", overrides)
        assert "\n" not in str(err.value)


def test_an_unwritable_storage_is_refused_in_one_line(ray_session, tmp_path, tiny_classifier, capsys):
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("a file where the storage directory would be")
    code = main(
        [
            "ppo",
            *("--config", "configs/smoke.yaml", "--run-dir", str(tmp_path / "run")),
            f"reward.model={tiny_classifier}",
            f"cluster.storage={blocked}/sub",
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "cluster.storage" in err, err
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
