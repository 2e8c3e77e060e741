"""A `rlhf-ray ppo` driver in its own process, attached to the test session's Ray (as a `ray job
submit` driver is attached to its cluster), so a test can signal it and reach its actors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import ray

REPO = Path(__file__).resolve().parents[2]


def comparable(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows]


def start_driver(run: Path, args: list[str], log: Path) -> subprocess.Popen:
    """`python -m rlhf_ray.cli ppo ARGS --run-dir RUN`, output to `log` (a pipe could fill and block it)."""
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address, "PYTHONPATH": str(REPO)}
    with log.open("w") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "rlhf_ray.cli", "ppo", *args, "--run-dir", str(run)],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def logged(path: Path) -> set[int]:
    """Iterations in a metrics.jsonl being written (a line still being appended is ignored)."""
    done = set()
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            done.add(json.loads(line)["iteration"])
        except ValueError:
            pass
    return done


def wait_for_iteration(run: Path, iteration: int, driver: subprocess.Popen | None = None, timeout_s=300) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if iteration in logged(run / "metrics.jsonl"):
            return
        if driver is not None and driver.poll() is not None:
            raise RuntimeError(f"the driver exited ({driver.returncode}) before iteration {iteration}")
        time.sleep(0.02)
    raise TimeoutError(f"iteration {iteration} never reached {run}")


def run_actors(run_name: str) -> dict[str, str]:
    """role -> actor name of the live actors of the run whose directory is called `run_name`."""
    out = {}
    for a in ray.util.list_named_actors(all_namespaces=True):
        prefix, _, role = a["name"].rpartition("/")
        if a["namespace"] == "rlhf_ray" and prefix.rsplit("-", 1)[0] == run_name:
            out[role] = a["name"]
    return out


def run_groups(run_name: str) -> list:
    """Placement groups of that run not yet removed."""
    return [
        g
        for g in ray.util.placement_group_table().values()
        if g["state"] != "REMOVED" and g["name"].startswith(f"rlhf_ray/{run_name}-")
    ]


def wait_released(run_name: str, timeout_s: float = 60) -> bool:
    """True once the run's actors and placement group are gone (ray.kill returns before they are)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not run_actors(run_name) and not run_groups(run_name):
            return True
        time.sleep(0.5)
    return False


def run_script(command: list[str], work: Path, *args: str) -> dict:
    """`python COMMAND WORK ARGS` in its own process, apart from the test session's Ray (it starts a
    cluster of its own); its WORK/result.json. COMMAND: a script under tests/integration, or -c CODE."""
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    env.pop("RAY_ADDRESS", None)
    if command[0].endswith(".py"):
        command = [str(REPO / "tests/integration" / command[0]), *command[1:]]
    out = subprocess.run(
        [sys.executable, *command, str(work), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return {**json.loads((work / "result.json").read_text()), "stderr": out.stderr[-3000:]}
