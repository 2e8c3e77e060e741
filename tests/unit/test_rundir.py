"""Checkpoint manifests and retention, run-directory rules, and a metrics log a killed driver left."""

from __future__ import annotations

import json
import logging

import pytest

from rlhf_ray.config.load import load_config, save_config
from rlhf_ray.errors import UserError
from rlhf_ray.runtime.metrics import MetricsLog, read_metrics
from rlhf_ray.runtime.rundir import MUTABLE_KEYS, claim, config_changes, prepare
from rlhf_ray.store.checkpoint import (
    LEARNER_FILES,
    MANIFEST,
    checkpoint_problem,
    latest_checkpoint,
    write_checkpoint,
)


def ckpt(run_dir, iteration: int, keep: int = 0):
    learner = {name: b"x" for name in LEARNER_FILES}
    files = {**learner, "a.bin": bytes([iteration]) * 100, "sub/b.json": b"{}"}
    return write_checkpoint(run_dir, iteration, files, keep=keep)


def test_manifest_is_written_and_checked(tmp_path):
    path = ckpt(tmp_path, 1)
    assert set(json.loads((path / MANIFEST).read_text())) == {"a.bin", "sub/b.json", *LEARNER_FILES}
    assert checkpoint_problem(path) is None
    (path / "a.bin").write_bytes(b"\x01" * 50)  # truncated
    assert "does not match" in checkpoint_problem(path)
    (path / "a.bin").unlink()
    assert "missing" in checkpoint_problem(path)
    (path / MANIFEST).unlink()
    assert "no MANIFEST" in checkpoint_problem(path)


def test_corrupt_newest_checkpoint_is_skipped_for_the_previous_one(tmp_path, caplog):
    ckpt(tmp_path, 1)
    newest = ckpt(tmp_path, 2)
    assert latest_checkpoint(tmp_path) == newest
    (newest / "a.bin").write_bytes(b"garbage")
    with caplog.at_level(logging.WARNING):
        assert latest_checkpoint(tmp_path).name == "iter-000001"
    assert "skipping checkpoint" in caplog.text and "iter-000002" in caplog.text
    (newest / MANIFEST).unlink()  # killed before the manifest (written last) landed
    assert latest_checkpoint(tmp_path).name == "iter-000001"


def test_only_the_last_keep_checkpoints_stay(tmp_path):
    for i in range(1, 6):
        ckpt(tmp_path, i, keep=2)
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("iter-*")) == ["iter-000004", "iter-000005"]
    ckpt(tmp_path, 6, keep=0)  # 0 keeps all
    assert len(list((tmp_path / "checkpoints").glob("iter-*"))) == 3


def test_overwrite_clears_the_old_run_but_nothing_else(tmp_path):
    cfg = load_config("configs/smoke.yaml")
    run = tmp_path / "run"
    ckpt(run, 1)
    save_config(cfg, run / "config.yaml")
    (run / "metrics.jsonl").write_text('{"iteration": 1}\n')
    (run / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="already holds a run"):
        prepare(run, cfg, resume=False, overwrite=False)
    prepare(run, cfg, resume=False, overwrite=True)
    assert (run / "metrics.jsonl").exists()  # checks only: deleted once the run directory is locked
    claim(run, resume=False, overwrite=True).release()
    assert sorted(p.name for p in run.iterdir()) == [".lock", "notes.txt"]
    prepare(run, cfg, resume=False, overwrite=False)  # now empty of runs: allowed


def test_resume_may_change_only_the_mutable_keys(tmp_path):
    saved = load_config("configs/smoke.yaml").to_dict()
    allowed = load_config("configs/smoke.yaml", ["ppo.iterations=9", "cluster.call_timeout_s=5", "run.log_level=debug"])
    assert set(config_changes(saved, allowed)) <= MUTABLE_KEYS
    changed = load_config("configs/smoke.yaml", ["algo.kl_coef=0.2", "ppo.iterations=9"])
    assert config_changes(saved, changed) == ["algo.kl_coef", "ppo.iterations"]
    del saved["ppo"]["keep_checkpoints"]  # a config saved before the key existed counts as its default
    assert config_changes(saved, load_config("configs/smoke.yaml")) == []


def test_metrics_log_drops_lines_past_the_checkpoint_and_a_half_written_one(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"iteration": 1}\n{"iteration": 2}\n{"iteration": 3}\n{"iterat')
    MetricsLog(path, keep_through=2)
    assert [r["iteration"] for r in read_metrics(path)] == [1, 2]
