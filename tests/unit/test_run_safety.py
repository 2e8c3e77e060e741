"""Nothing deleted by mistake, nothing trusted blindly: --overwrite rules, names that try to leave
their directory, checkpoint manifests, atomic cache replacement, temp-dir hygiene, content checks."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

from rlhf_ray.cli import main
from rlhf_ray.config.load import load_config, save_config
from rlhf_ray.errors import UserError
from rlhf_ray.models.assets import cached, file_sha256
from rlhf_ray.runtime.rundir import claim, prepare
from rlhf_ray.stages import pipeline
from rlhf_ray.store.artifacts import CONTENT, stamp
from rlhf_ray.store.checkpoint import (
    LEARNER_FILES,
    MANIFEST,
    checkpoint_problem,
    temp_dir,
    write_checkpoint,
    write_dir,
)
from rlhf_ray.store.locks import sweep_stale

SMOKE = "configs/smoke.yaml"


def fake_checkpoint(run_dir, iteration=1):
    files = {name: b"x" for name in LEARNER_FILES}
    files["driver_state.json"] = json.dumps({"iteration": iteration}).encode()
    return write_checkpoint(run_dir, iteration, files)


def test_overwrite_refuses_an_input_inside_the_run_directory(tmp_path, tiny_lm, capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny_lm, run / "model")  # e.g. a merge stage's output, reused as the policy
    (run / "metrics.jsonl").write_text('{"iteration": 1}\n')
    code = main(["ppo", "--config", SMOKE, "--run-dir", str(run), "--overwrite", f"model.policy={run / 'model'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "model.policy" in err[0] and "inside" in err[0]
    assert (run / "model" / "config.json").is_file() and (run / "metrics.jsonl").is_file()  # nothing deleted


def test_overwrite_removes_links_without_following_them(tmp_path):
    cfg = load_config(SMOKE)
    outside = tmp_path / "elsewhere"
    (outside / "iter-000001").mkdir(parents=True)
    (outside / "iter-000001" / "keep.bin").write_bytes(b"mine")
    (outside / "notes.txt").write_text("mine")
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoints").symlink_to(outside, target_is_directory=True)
    (run / "console.log").symlink_to(outside / "notes.txt")
    (run / "samples").mkdir()
    (run / "samples" / "link").symlink_to(outside, target_is_directory=True)  # a link inside a removed tree
    prepare(run, cfg, resume=False, overwrite=True)
    claim(run, resume=False, overwrite=True).release()
    assert sorted(p.name for p in run.iterdir()) == [".lock"]
    assert (outside / "iter-000001" / "keep.bin").read_bytes() == b"mine" and (outside / "notes.txt").exists()


def test_pipeline_overwrite_resets_its_ppo_stage(tmp_path):
    run = tmp_path / "run"
    fake_checkpoint(run / "ppo")
    (run / "ppo" / "metrics.jsonl").write_text('{"iteration": 1}\n')
    (run / "pipeline.json").write_text("{}")
    (run / "notes.txt").write_text("mine")
    claim(run, resume=False, overwrite=True, strict=False).release()
    assert sorted(p.name for p in run.iterdir()) == [".lock", "notes.txt"]


def test_pipeline_rerun_with_a_changed_config_is_refused_naming_the_keys(tmp_path):
    ppo_dir = tmp_path / "run" / "ppo"
    fake_checkpoint(ppo_dir)
    save_config(load_config(SMOKE), ppo_dir / "config.yaml")
    changed = load_config(SMOKE, ["ppo.lr=0.5", "ppo.iterations=9"])  # iterations may change, lr may not
    with pytest.raises(UserError, match=r"different config \(ppo\.lr\).*--overwrite"):
        pipeline._run_ppo(changed, ppo_dir)


@pytest.mark.parametrize("name", ["../x", "/etc/passwd", "a/../../x", "", "a//b", "./a"])
def test_names_that_would_leave_their_directory_are_refused(tmp_path, name):
    with pytest.raises(ValueError, match="relative|leave"):
        write_dir({name: b"x"}, tmp_path / "out" / "target")
    assert not (tmp_path / "x").exists() and not (tmp_path / "out" / "x").exists()
    assert not list((tmp_path / "out").glob(".*tmp-*"))  # the temp dir is cleaned up


def test_manifest_must_list_the_learner_files_and_stay_inside(tmp_path):
    path = fake_checkpoint(tmp_path)
    assert checkpoint_problem(path) is None
    (path / MANIFEST).write_text("{}")
    assert "does not list" in checkpoint_problem(path)
    (tmp_path / "secret").write_bytes(b"s")
    manifest = {name: "0" * 64 for name in LEARNER_FILES} | {"../../secret": "0" * 64}
    (path / MANIFEST).write_text(json.dumps(manifest))
    assert "leave" in checkpoint_problem(path) or "does not match" in checkpoint_problem(path)
    (path / MANIFEST).write_text("[]")
    assert "map" in checkpoint_problem(path)


def test_replacing_an_entry_never_shows_it_missing_and_concurrent_writers_both_succeed(tmp_path):
    target = tmp_path / "entry"
    write_dir({f"f{i}": b"0" * 1000 for i in range(200)}, target)
    stop, seen_missing, errors = threading.Event(), [], []

    def read():
        while not stop.is_set():
            if not (target / "f0").exists():
                seen_missing.append(1)

    def write(tag: int):
        try:
            for _ in range(15):
                write_dir({f"f{i}": bytes([tag]) * 1000 for i in range(200)}, target)
        except Exception as exc:  # an ENOTEMPTY/ENOENT would land here
            errors.append(exc)

    reader = threading.Thread(target=read)
    writers = [threading.Thread(target=write, args=(t,)) for t in (1, 2)]
    reader.start()
    for w in writers:
        w.start()
    for w in writers:
        w.join()
    stop.set()
    reader.join()
    assert not errors and not seen_missing
    assert len(list(target.iterdir())) == 200 and not list(tmp_path.glob(".*"))  # no leftovers


def test_temp_dirs_are_unique_and_leftovers_of_dead_writers_are_swept(tmp_path):
    a, b = temp_dir(tmp_path, ".m.tmp-"), temp_dir(tmp_path, ".m.tmp-")
    assert a != b and f"-{os.getpid()}-" in a.name
    host = socket.gethostname().replace("-", "_")[:40]
    dead = subprocess_pid_that_exited()
    old = time.time() - 7200
    leftovers = {
        "dead": tmp_path / f".m.tmp-{host}-{dead}-abcd",  # writer gone, old: removed
        "live": tmp_path / f".m.tmp-{host}-{os.getpid()}-abcd",  # writer alive: kept
        "fresh": tmp_path / f".n.tmp-{host}-{dead}-ef01",  # recent: kept
        "other": tmp_path / f".m.tmp-otherhost-{dead}-abcd",  # another host, old: removed
    }
    for name, path in leftovers.items():
        (path / "sub").mkdir(parents=True)
        (path / "sub" / "f").write_text("x")
        if name != "fresh":
            for p in (path / "sub" / "f", path / "sub", path):
                os.utime(p, (old, old))
    removed = set(sweep_stale(tmp_path))
    assert removed == {leftovers["dead"], leftovers["other"]}
    temp_dir(tmp_path, ".m.tmp-")  # making a temp dir sweeps too
    assert leftovers["live"].exists() and leftovers["fresh"].exists()


def subprocess_pid_that_exited() -> int:
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(proc.stdout)


def test_a_corrupted_cache_entry_is_rebuilt_with_a_warning(tmp_path, caplog):
    builds = []

    def build(target):
        builds.append(1)
        tmp = temp_dir(target.parent, ".tmp-")
        (tmp / "weights.bin").write_bytes(b"w" * 1000)
        stamp(tmp)
        os.rename(tmp, target)
        return target

    target = tmp_path / "models" / "m-v1"
    assert cached(target, build) == target and cached(target, build) == target and len(builds) == 1
    with (target / "weights.bin").open("r+b") as f:  # same size, one byte flipped
        f.seek(10)
        f.write(b"X")
    with caplog.at_level(logging.WARNING):
        cached(target, build)
    assert len(builds) == 2 and "corrupted" in caplog.text
    assert (target / "weights.bin").read_bytes() == b"w" * 1000 and (target / CONTENT).is_file()


def test_the_conversion_key_hashes_the_files_content(tmp_path):
    path = tmp_path / "model.gguf"
    path.write_bytes(b"a" * 4096)
    first = file_sha256(path, tmp_path / "cache")
    assert first == file_sha256(path, tmp_path / "cache")  # remembered
    path.write_bytes(b"b" * 4096)  # same path and size, new content
    assert file_sha256(path, tmp_path / "cache") != first


def test_the_job_upload_leaves_secrets_behind():
    import yaml
    from ray._private.runtime_env.packaging import _get_excludes

    root = Path(__file__).resolve().parents[2]
    excluded = _get_excludes(root, yaml.safe_load((root / "jobs/runtime_env.yaml").read_text())["excludes"])
    for secret in (".env", "deploy/.env.prod", "certs/server.pem", "credentials", ".aws/credentials", "id_rsa"):
        assert excluded(root / secret), secret
    for code in ("rlhf_ray/cli.py", "configs/smoke.yaml", "README.md"):
        assert not excluded(root / code), code


def test_the_dashboard_listens_on_loopback_and_ray_has_token_auth():
    root = Path(__file__).resolve().parents[2]
    head = " ".join(yaml_load(root / "cluster.yaml")["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head and "0.0.0.0" not in head
    (pin,) = re.findall(r'"ray\[default\]>=([0-9.]+)"', (root / "pyproject.toml").read_text())
    assert tuple(map(int, pin.split("."))) >= (2, 52)  # token auth exists from Ray 2.52


def yaml_load(path):
    import yaml

    return yaml.safe_load(path.read_text())


def test_a_relative_run_dir_in_a_ray_job_gets_a_warning_with_an_absolute_path(monkeypatch, caplog):
    from rlhf_ray.cli import warn_job_relative

    monkeypatch.setenv("RAY_JOB_ID", "02000000")
    with caplog.at_level(logging.WARNING):
        warn_job_relative(Path("/abs/run"))
        assert not caplog.text
        warn_job_relative(Path("runs/cluster"))
    assert "relative" in caplog.text and str(Path.home() / "runs" / "cluster") in caplog.text
