"""A run that is still writing: a second writer is refused in one line naming the holder (never a
traceback over a checkpoint the live run pruned under it), and readers (eval, generate, report) take
its newest intact checkpoint. The live run is a real second process that holds the run directory's
lock and writes and prunes checkpoints with the project's own code, as fast as it can."""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rlhf_ray import cli
from rlhf_ray.errors import UserError
from rlhf_ray.runtime.metrics import read_metrics
from rlhf_ray.runtime.rundir import LOCK
from rlhf_ray.stages import pipeline
from rlhf_ray.store import checkpoint
from rlhf_ray.store.checkpoint import LEARNER_FILES, MANIFEST, write_checkpoint
from rlhf_ray.tools.runs import find_adapter

REPO = Path(__file__).resolve().parents[2]
SMOKE = "configs/smoke.yaml"
ROUNDS = 50

# The live run: claims the run directory as `rlhf-ray ppo` does, saves its config, then writes a
# checkpoint per "iteration" keeping only the newest (ppo.keep_checkpoints=1) until it is killed
# (or its parent, the test, is gone).
LIVE_RUN = """
import json, os, sys, time
from pathlib import Path
from rlhf_ray.config.load import load_config, save_config
from rlhf_ray.runtime.rundir import claim
from rlhf_ray.store.checkpoint import write_checkpoint

run = Path(sys.argv[1])
lock = claim(run, resume=False, overwrite=False)
save_config(load_config(sys.argv[2]), run / "config.yaml")
policy = Path(sys.argv[3]).read_bytes()
iteration, parent, end = 0, os.getppid(), time.monotonic() + 300
while os.getppid() == parent and time.monotonic() < end:  # never outlives the test
    iteration += 1
    files = {
        "policy.safetensors": policy,
        "optimizer.pt": bytes(64 * 1024),
        "learner_state.json": json.dumps({"adapter_sha256": None}).encode(),
        "driver_state.json": json.dumps({"iteration": iteration}).encode(),
    }
    write_checkpoint(run, iteration, files, keep=1)
    if iteration == 2:
        print("live", flush=True)
"""


@pytest.fixture(scope="module")
def live_run(tmp_path_factory):
    """One live run for the tests that only read it or are refused by it."""
    import torch
    from safetensors.torch import save

    root = tmp_path_factory.mktemp("live")
    run, policy = root / "run", root / "policy.safetensors"
    # a value head, as the smoke config's critic needs: a resume that got this far could restore it
    policy.write_bytes(save({"value_head.summary.bias": torch.zeros(1), "lora": torch.randn(64, 256)}))
    proc = subprocess.Popen(
        [sys.executable, "-c", LIVE_RUN, str(run), SMOKE, str(policy)], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "live", "the live run did not start"
        yield run, proc
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.slow  # 3-5 s on 2 cores: in `make test`, not in test-fast
def test_resuming_a_live_run_that_prunes_is_refused_in_one_line_every_time(live_run, monkeypatch, capsys):
    def no_stage(*args, **kwargs):
        raise AssertionError("a refused resume must not start Ray or any stage")

    monkeypatch.setattr("rlhf_ray.runtime.placement.connect", no_stage)
    monkeypatch.setattr("rlhf_ray.stages.ppo.run", no_stage)
    monkeypatch.chdir(REPO)
    run, proc = live_run
    for _ in range(ROUNDS):  # an exception here (a traceback for the user) fails the test
        # more iterations than the live run will reach: a resume that reads first finds no finished run
        # and reads on into checkpoints being pruned (refused later or, before the fix, a traceback)
        code = cli.main(["ppo", "--resume", str(run), "ppo.iterations=1000000"])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1, err
        assert f"is in use by another rlhf-ray process (pid {proc.pid} on {socket.gethostname()})" in err[0]
    assert proc.poll() is None  # the live run went on writing throughout


def test_a_fresh_run_or_an_overwrite_into_a_live_run_is_refused_too(live_run, capsys):
    run, proc = live_run
    for argv in (["--run-dir", str(run)], ["--run-dir", str(run), "--overwrite"]):
        assert cli.main(["ppo", "--config", SMOKE, *argv]) == 2
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert f"(pid {proc.pid} on {socket.gethostname()})" in line
    assert (run / "config.yaml").is_file()  # --overwrite deleted nothing of the live run


def test_readers_of_a_live_run_take_its_newest_intact_checkpoint_every_time(live_run):
    run, _ = live_run
    seen, reads, deadline = set(), 0, time.monotonic() + 30
    while reads < ROUNDS or (len(seen) < 2 and time.monotonic() < deadline):
        adapter = find_adapter(run)  # what eval and generate --adapter RUN do first
        assert adapter.run_dir == run and adapter.data is not None
        assert adapter.payload().data == adapter.data
        seen.add(adapter.path.parent.name)
        reads += 1
    assert len(seen) > 1  # checkpoints came and went while they were read


def _checkpoint(run: Path, iteration: int) -> Path:
    files = {name: f"{name} of {iteration}".encode() for name in LEARNER_FILES}
    files["learner_state.json"] = json.dumps({"adapter_sha256": None}).encode()
    return write_checkpoint(run, iteration, files)


def test_a_reader_takes_the_newest_intact_checkpoint_when_one_is_removed_under_it(tmp_path, monkeypatch):
    run = tmp_path / "run"
    (run / "config.yaml").parent.mkdir()
    (run / "config.yaml").write_text("{}\n")
    for i in (1, 2, 3):
        _checkpoint(run, i)
    read_dir = checkpoint.read_dir

    def pruned_while_read(path):  # the live run prunes iter-3 just as the reader opens it
        if path.name == "iter-000003":
            shutil.rmtree(path)
        return read_dir(path)

    monkeypatch.setattr(checkpoint, "read_dir", pruned_while_read)
    adapter = find_adapter(run)
    assert adapter.path == run / "checkpoints" / "iter-000002" / "policy.safetensors"
    assert adapter.data == b"policy.safetensors of 2" and adapter.run_dir == run

    # a file that vanishes mid-read (the manifest check runs on what was read) and a corrupt one
    monkeypatch.setattr(checkpoint, "read_dir", read_dir)
    (run / "checkpoints" / "iter-000002" / "optimizer.pt").unlink()
    assert find_adapter(run).data == b"policy.safetensors of 1"
    assert checkpoint.checkpoint_problem(run / "checkpoints" / "iter-000002") == "optimizer.pt is missing"
    assert checkpoint.checkpoint_problem(run / "checkpoints" / "gone") is not None  # no exception either


def test_a_checkpoint_directory_pruned_before_it_is_read_is_one_line(tmp_path):
    run = tmp_path / "run"
    ckpt = _checkpoint(run, 1)
    (ckpt / "optimizer.pt").unlink()
    with pytest.raises(UserError, match="pass its run directory"):
        find_adapter(ckpt)
    manifest = json.loads((_checkpoint(run, 2) / MANIFEST).read_text())
    adapter = find_adapter(run / "checkpoints" / "iter-000002")
    assert hashlib.sha256(adapter.data).hexdigest() == manifest["policy.safetensors"]


def test_the_pipeline_does_not_continue_a_ppo_stage_another_process_holds(tmp_path):
    from rlhf_ray.config.load import load_config

    ppo_dir = tmp_path / "run" / "ppo"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from rlhf_ray.store.locks import FileLock; "
            "FileLock(Path(sys.argv[1])).acquire(); print('held', flush=True); time.sleep(120)",
            str(ppo_dir / LOCK),
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(UserError, match=f"pid {holder.pid}"):
            pipeline._run_ppo(load_config(REPO / SMOKE), ppo_dir)
    finally:
        holder.kill()
        holder.wait()


def test_report_reads_metrics_while_a_line_is_being_appended(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"iteration": 1}\n{"iteration": 2}\n{"itera')
    assert [r["iteration"] for r in read_metrics(path)] == [1, 2]
    path.write_text('{"iteration": 1}\n{"iteration": 2}')  # complete, newline not yet written
    assert [r["iteration"] for r in read_metrics(path)] == [1, 2]
