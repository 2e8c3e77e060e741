"""`ray job submit` against a real Ray head started by `ray start --head` (dashboard + job server)."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from rlhf_ray.actors.dp import free_port
from rlhf_ray.runtime.metrics import read_metrics

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def ray_head():
    """A head node in its own process group; killing the group tears the whole cluster down. Its own
    --temp-dir: a job's driver finds its cluster through the head's temp dir (Ray's job supervisor sets
    RAY_ADDRESS from its `ray_current_cluster` file), and /tmp/ray's names whichever head on this machine
    started last (make test runs another module's head beside this one)."""
    port, dash = free_port(), free_port()
    temp_dir = tempfile.mkdtemp(prefix="ray-jobs-")  # short: Ray's socket paths live under it
    # The head (and so every job entrypoint) runs with the project venv first on PATH, as a user
    # who activated it would. Ray 2.59+ heads use token auth; a fresh machine has no token yet, so
    # head, job drivers and the `ray job submit` client share one made for this test.
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(32),
        "PATH": f"{BIN}:{os.environ['PATH']}",
    }
    head = subprocess.Popen(
        [
            str(BIN / "ray"),
            "start",
            "--head",
            "--block",
            f"--port={port}",
            f"--dashboard-port={dash}",
            "--dashboard-host=127.0.0.1",
            "--num-cpus=2",
            "--include-dashboard=true",
            "--disable-usage-stats",
            f"--temp-dir={temp_dir}",
            # The session's local Ray (other tests) holds the default agent ports: without its own, this
            # head's job agent cannot start and every submission answers "No available agent".
            *[
                f"--{flag}={free_port()}"
                for flag in (
                    "dashboard-agent-listen-port",
                    "dashboard-agent-grpc-port",
                    "metrics-export-port",
                    "runtime-env-agent-port",
                )
            ],
        ],
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    address = f"http://127.0.0.1:{dash}"
    deadline = time.time() + 120
    while (
        subprocess.run([str(BIN / "ray"), "job", "list", "--address", address], env=env, capture_output=True).returncode
        != 0
    ):
        assert head.poll() is None and time.time() < deadline, "ray head did not come up"
        time.sleep(2)
    yield address, env
    os.killpg(head.pid, signal.SIGTERM)
    try:
        head.wait(timeout=5)  # `ray start --block` can take 30 s to exit on SIGTERM: the group is killed
    except subprocess.TimeoutExpired:
        os.killpg(head.pid, signal.SIGKILL)
    shutil.rmtree(temp_dir, ignore_errors=True)


def _submit(ray_head, *entrypoint: str) -> subprocess.CompletedProcess:
    address, env = ray_head
    cmd = [
        str(BIN / "ray"),
        "job",
        "submit",
        "--address",
        address,
        "--runtime-env",
        "jobs/runtime_env.yaml",
        "--",
        "python",
        *entrypoint,
    ]
    deadline = time.time() + 120
    while True:
        out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        # The head answers `ray job list` before its node's job agent has registered (slow on a busy
        # machine); Ray itself says to try again later.
        if "No available agent to submit job" not in out.stderr or time.time() > deadline:
            return out
        time.sleep(3)


@pytest.mark.slow
def test_bad_config_fails_the_job_with_one_clear_line(ray_head, tmp_path):
    # First on the head: _submit waits for its job agent, which registers after `ray job list` answers.
    out = _submit(
        ray_head, "jobs/ppo.py", "--config", "configs/smoke.yaml", "--run-dir", str(tmp_path / "x"), "ppo.lr=-1"
    )
    assert out.returncode != 0
    assert "config key 'ppo.lr': must be > 0" in out.stdout + out.stderr


@pytest.mark.slow
def test_two_jobs_at_once_on_one_head(ray_head, tmp_path):
    """Both entrypoints (jobs/ppo.py and `python -m rlhf_ray ppo`) run as jobs on the head at once;
    per-run actor and placement-group names: two runs on one cluster do not collide."""
    address, env = ray_head
    runs = [tmp_path / "job-a", tmp_path / "job-b"]
    entrypoints = [["jobs/ppo.py"], ["-m", "rlhf_ray", "ppo"]]
    submit = [str(BIN / "ray"), "job", "submit", "--address", address, "--runtime-env", "jobs/runtime_env.yaml", "--"]
    jobs = [
        subprocess.Popen(
            [*submit, "python", *entry, "--config", "configs/smoke.yaml", "--run-dir", str(run)],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for entry, run in zip(entrypoints, runs)
    ]
    outs = [job.communicate(timeout=600)[0] for job in jobs]
    assert all(job.returncode == 0 for job in jobs), "\n".join(o[-3000:] for o in outs)
    names = [[p["name"] for p in json.loads((run / "placement.json").read_text())] for run in runs]
    assert [n.rsplit("/", 1)[1] for n in names[0]] == ["generator-0", "reward-0", "learner-0"]  # role still shown
    assert not set(names[0]) & set(names[1])
    assert all([r["iteration"] for r in read_metrics(run / "metrics.jsonl")] == [1, 2] for run in runs)
    # A job's console output is kept in the run directory too, with the run's provenance.
    assert "ppo 2/2" in (runs[0] / "console.log").read_text()  # plain progress lines: not a terminal
    assert (runs[0] / "run_info.json").exists() and "run directory:" in outs[0]


@pytest.mark.parametrize("script", sorted(p.name for p in (REPO / "jobs").glob("*.py")))
def test_every_job_entrypoint_is_wired_to_its_stage(script, tmp_path):
    """Each jobs/*.py runs its own stage: a bad value for that stage's key is refused with exit 2."""
    stage = script.removesuffix(".py")
    key = {"sft": "sft.lr", "merge": "merge.dtype", "reward": "reward.lr"}.get(stage, "ppo.lr")
    value = "float8" if key == "merge.dtype" else "-1"
    device = ["--device", "cpu"] if stage == "gpu_check" else []  # it never falls back to the CPU unasked
    out = subprocess.run(
        [sys.executable, f"jobs/{script}", *device, "--run-dir", str(tmp_path / "r"), f"{key}={value}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2 and f"config key '{key}'" in out.stderr
