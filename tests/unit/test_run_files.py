"""What a run directory holds besides results: files with the user's umask, run_info.json,
console.log, a finished run left alone by --resume, and log noise that is filtered by message."""

from __future__ import annotations

import json
import logging
import os
import re
import stat
import sys

import pytest

from rlhf_ray import cli
from rlhf_ray import process as noise
from rlhf_ray.runtime.rundir import LOCK
from rlhf_ray.store.checkpoint import atomic_write, write_checkpoint, write_dir
from rlhf_ray.store.provenance import ConsoleLog, collect, model_reference, write_run_info


@pytest.fixture
def umask():
    """Run a test body under a chosen umask (restored afterwards)."""
    old = os.umask(0o022)
    os.umask(old)
    yield lambda mask: os.umask(mask)
    os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("mask", [0o002, 0o027])
def test_published_files_and_dirs_follow_the_umask(tmp_path, umask, mask):
    umask(mask)
    atomic_write(tmp_path / "DONE.json", b"{}")
    write_dir({"a.bin": b"1", "sub/b.bin": b"2"}, tmp_path / "model")
    ckpt = write_checkpoint(tmp_path / "run", 3, {"policy.safetensors": b"x", "adapter/adapter_config.json": b"{}"})
    files = [
        tmp_path / "DONE.json",
        tmp_path / "model" / "a.bin",
        tmp_path / "model" / "sub" / "b.bin",
        ckpt / "policy.safetensors",
        ckpt.parent / "LATEST",
    ]
    dirs = [tmp_path / "model", tmp_path / "model" / "sub", ckpt, ckpt / "adapter"]
    assert {f.name: oct(_mode(f)) for f in files} == {f.name: oct(0o666 & ~mask) for f in files}
    assert {d.name: oct(_mode(d)) for d in dirs} == {d.name: oct(0o777 & ~mask) for d in dirs}


def test_run_info_names_versions_machine_commit_and_command(tmp_path):
    info = collect(["ppo", "--run-dir", "x"])
    assert set(info["versions"]) >= {"torch", "transformers", "peft", "bitsandbytes", "ray", "rlhf_ray"}
    assert all(v for v in info["versions"].values())
    assert info["machine"]["hostname"] and info["machine"]["cpus"] >= 1 and info["machine"]["ram_gb"] > 0
    assert isinstance(info["machine"]["gpus"], list)
    assert re.fullmatch(r"[0-9a-f]{40}(-dirty)?", info["git_commit"])  # tests run from a checkout
    assert info["command"]["args"] == ["ppo", "--run-dir", "x"] and info["command"]["cwd"] == os.getcwd()
    write_run_info(tmp_path, info)
    write_run_info(tmp_path, {**info, "command": {"args": ["ppo", "--resume", "x"]}})  # a resumed invocation
    saved = json.loads((tmp_path / "run_info.json").read_text())
    assert saved["command"]["args"][1] == "--resume" and saved["previous"][0]["command"]["args"][1] == "--run-dir"


def test_git_commit_is_unknown_outside_a_checkout(tmp_path, monkeypatch):
    from rlhf_ray.store import provenance

    monkeypatch.setattr(provenance, "__file__", str(tmp_path / "rlhf_ray" / "provenance.py"))
    assert provenance.git_commit() == "unknown"


def test_model_reference_names_the_cached_stage_and_its_hash(tmp_path):
    stage = tmp_path / "stages" / "reward-0123456789abcdef"
    (stage / "model").mkdir(parents=True)
    (stage / "DONE.json").write_text(json.dumps({"stage": "reward", "accuracy": 0.83}))
    ref = model_reference(None, str(stage / "model"))
    assert ref["configured"] is None and ref["resolved"] == str(stage / "model")
    assert ref["stage_dir"] == str(stage) and ref["stage_hash"] == "0123456789abcdef"
    assert ref["stage_summary"]["accuracy"] == 0.83
    (tmp_path / "plain").mkdir()
    assert "stage_dir" not in model_reference("tiny-random-bert", str(tmp_path / "plain"))
    assert "stage_dir" not in model_reference("org/hub-model", "org/hub-model")


def test_console_log_keeps_what_the_terminal_shows(tmp_path, capsys):
    handler = logging.StreamHandler(sys.stderr)  # made before the log opens, as basicConfig's is
    logger = logging.getLogger("rlhf_ray.test_console")
    logger.addHandler(handler)
    try:
        with ConsoleLog(tmp_path / "console.log"):
            print("hello")
            sys.stderr.write("\rbar 1/2\rbar 2/2\n")  # a progress bar redrawn in place
            logger.warning("a log line")
            print("unterminated", end="")
        print("after the log closed")
    finally:
        logger.removeHandler(handler)
    assert (tmp_path / "console.log").read_text() == "hello\nbar 2/2\na log line\nunterminated\n"
    seen = capsys.readouterr()
    assert (
        seen.out == "hello\nunterminatedafter the log closed\n" and "bar 2/2" in seen.err and "a log line" in seen.err
    )


def _finished_run(run, iterations=2):
    import torch
    from safetensors.torch import save

    files = {
        "driver_state.json": json.dumps({"iteration": iterations}).encode(),
        "optimizer.pt": b"",
        "learner_state.json": b"{}",
        "policy.safetensors": save({"value_head.summary.bias": torch.zeros(1)}),
    }
    write_checkpoint(run, iterations, files)
    (run / "config.yaml").write_text(f"ppo:\n  iterations: {iterations}\n")
    atomic_write(run / "DONE.json", json.dumps({"iterations": iterations, "final": {"reward/mean": 1.5}}).encode())


def test_resume_of_a_finished_run_exits_at_once(tmp_path, monkeypatch, capsys):
    def no_stage(*args, **kwargs):
        raise AssertionError("a finished run must not start Ray or any stage")

    monkeypatch.setattr("rlhf_ray.runtime.placement.connect", no_stage)
    monkeypatch.setattr("rlhf_ray.stages.ppo.run", no_stage)
    run = tmp_path / "run"
    _finished_run(run)
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in run.iterdir() if p.is_file()}
    assert cli.main(["ppo", "--resume", str(run)]) == 0
    out = capsys.readouterr()
    assert f"{run} is complete (2 of 2 iterations)" in out.err
    assert f"rlhf-ray ppo --resume {run} ppo.iterations=N" in out.err and len(out.err.strip().splitlines()) == 1
    assert json.loads(out.out)["final"]["reward/mean"] == 1.5
    # nothing written; the run's lock (every real run has RUN_DIR/.lock) was taken to read it
    after = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in run.iterdir() if p.is_file() and p.name != LOCK}
    assert after == before


def test_resume_with_more_iterations_runs_the_stage(tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr("rlhf_ray.stages.ppo.run", lambda cfg, run_dir, resume: calls.append(resume) or {"ok": 1})
    run = tmp_path / "run"
    _finished_run(run)
    assert cli.main(["ppo", "--resume", str(run), "ppo.iterations=3"]) == 0
    assert calls == [True]
    assert json.loads((run / "run_info.json").read_text())["command"]["args"][-1] == "ppo.iterations=3"
    assert '"ok": 1' in (run / "console.log").read_text()  # the result line is in the log too


def test_noise_filters_drop_only_the_two_messages():
    from ray._private.authentication import authentication_token_setup as ray_auth

    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    noise.install_log_filters()
    noise.install_log_filters()  # idempotent
    loggers = [logging.getLogger(noise.RAY_TOKEN_LOGGER), logging.getLogger(noise.BNB_LOGGER)]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.addHandler(Keep())
        lg.setLevel(logging.INFO)  # models.policy.quiet_warnings raises bitsandbytes' level when a model loaded first
    try:
        ray_auth._warn_token_auth_enabled()  # Ray's own call, so a changed message fails this test
        ray_auth._warn_token_auth_disabled()  # this one matters and stays
        loggers[1].warning(noise.BNB_MESSAGE + " from kernels-community: %s", "No module named 'kernels'")
        loggers[1].warning("another bitsandbytes warning")
    finally:
        for lg, level in zip(loggers, levels):
            lg.handlers = [h for h in lg.handlers if not isinstance(h, Keep)]
            lg.setLevel(level)
    assert len(records) == 2 and "disabled" in records[0] and records[1] == "another bitsandbytes warning"
    assert sum(isinstance(f, noise._Drop) for f in loggers[0].filters) == 1
    import importlib.util
    from pathlib import Path

    bnb = Path(importlib.util.find_spec("bitsandbytes").origin).parent  # read, not imported: seconds saved
    assert noise.BNB_MESSAGE in (bnb / "backends" / "cpu" / "ops.py").read_text()  # still bitsandbytes' wording
