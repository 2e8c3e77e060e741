"""Chaos: a 70-iteration smoke run during which role actors are killed (ray.kill, SIGKILL of the
process) or frozen (SIGSTOP), one fault every few iterations, then the driver gets SIGTERM and the
run is resumed. The final metrics must equal an uninterrupted run's apart from time/* keys, and
events.jsonl must list a recovery of the right role for every fault."""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path

import pytest
import ray
from driver_process import comparable, start_driver, wait_for_iteration, wait_released

from rlhf_ray.cli import main
from rlhf_ray.runtime.metrics import read_metrics
from rlhf_ray.runtime.recovery import read_events

pytestmark = [pytest.mark.usefixtures("ray_session"), pytest.mark.slow]

ITERATIONS = 70
ARGS = [
    "--config",
    "configs/smoke.yaml",
    f"ppo.iterations={ITERATIONS}",
    "ppo.checkpoint_every=10",
    "ppo.samples_every=1000",
    "cluster.call_timeout_s=15",  # a frozen actor is given up on after 15 s (then the 15 s probe)
    "cluster.max_role_restarts=10",
]
FIRST_FAULT_AFTER, GAP, FAULTS = 3, 3, 6  # a fault after iteration 3, then 3 iterations after each recovery


def live_actor(run_name: str, role: str):
    """(handle, pid) of the run's live actor of `role`. The pid comes from the GCS, not from the
    actor: a call to it would queue behind the driver's calls (max_concurrency=1)."""
    from ray._private.state import state

    deadline = time.monotonic() + 120  # a replacement may still be starting
    while True:
        for a in ray.util.list_named_actors(all_namespaces=True):
            prefix, _, name = a["name"].rpartition("/")
            if a["namespace"] == "rlhf_ray" and name == role and prefix.rsplit("-", 1)[0] == run_name:
                handle = ray.get_actor(a["name"], namespace="rlhf_ray")
                record = state.actor_table(handle._actor_id.hex())
                if record and record["State"] == "ALIVE":
                    return handle, record["Pid"]
        if time.monotonic() > deadline:
            raise LookupError(f"no live {role} actor of {run_name}")
        time.sleep(0.2)


def plan_faults(seed: int) -> list[tuple[str, str]]:
    """(kind, role) per fault: every role killed once and one frozen, the rest drawn at random."""
    rng = random.Random(seed)
    roles = ["generator-0", "reward-0", "learner-0"]
    faults = [("kill", r) for r in roles] + [("freeze", rng.choice(roles))]
    faults += [(rng.choice(["kill", "sigkill"]), rng.choice(roles)) for _ in range(FAULTS - len(faults))]
    rng.shuffle(faults)
    return faults


def inject(run_name: str, kind: str, role: str, frozen: list[int]) -> None:
    handle, pid = live_actor(run_name, role)
    if kind == "kill":
        ray.kill(handle)
    elif kind == "sigkill":
        os.kill(pid, signal.SIGKILL)  # the process dies under Ray: a crash, not a request
    else:
        os.kill(pid, signal.SIGSTOP)  # alive to Ray, answers nothing: a hang
        frozen.append(pid)


def wait_for_recovery(run: Path, role: str, since: float, driver, timeout_s: float = 180) -> dict:
    """The first recovery event of `role` logged after `since` (wall clock)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for event in read_events(run / "events.jsonl"):
            if event["kind"] == "recovery" and event["role"] == role and event["time"] >= since:
                return event
        if driver.poll() is not None:
            raise RuntimeError(f"the driver exited ({driver.returncode}) before recovering {role}")
        time.sleep(0.1)
    raise TimeoutError(f"no recovery of {role} within {timeout_s:.0f}s")


def test_chaos_faults_then_sigterm_then_resume_reproduce_the_uninterrupted_run(tmp_path):
    run, reference = tmp_path / "chaos-run", tmp_path / "chaos-ref"
    faults = plan_faults(seed=21)
    frozen: list[int] = []
    ref_driver = start_driver(reference, ARGS, tmp_path / "reference.log")
    driver = start_driver(run, ARGS, tmp_path / "driver.log")
    recovered = []
    try:
        wait_for_iteration(run, 1, driver)
        for role in {r for _, r in faults}:
            live_actor(run.name, role)  # the first GCS queries of this process are slow: not during a fault
        after = FIRST_FAULT_AFTER
        for kind, role in faults:  # one fault at a time, a few iterations after the last recovery
            wait_for_iteration(run, after, driver)
            t0 = time.time()
            inject(run.name, kind, role, frozen)
            event = wait_for_recovery(run, role, t0, driver)
            recovered.append((kind, event))
            after = event["iteration"] + GAP
        wait_for_iteration(run, after, driver)
        assert after < ITERATIONS - 5, f"the faults took until iteration {after}: too late to stop the run mid-way"
        driver.send_signal(signal.SIGTERM)
        code = driver.wait(timeout=120)
        assert ref_driver.wait(timeout=300) == 0
    finally:
        for proc in (driver, ref_driver):
            if proc.poll() is None:
                proc.kill()
        for pid in frozen:  # replaced by the supervisor; make sure nothing stays frozen
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    output = (tmp_path / "driver.log").read_text()
    assert code == 128 + signal.SIGTERM and "is checkpointed: continue with" in output, output[-3000:]
    assert wait_released(run.name)

    t0 = time.perf_counter()
    # a loaded machine may be slow to restore: the call timeout is a key a resume may change
    assert main(["ppo", "--resume", str(run), "cluster.call_timeout_s=120"]) == 0
    resume_s = time.perf_counter() - t0
    rows = comparable(read_metrics(run / "metrics.jsonl"))
    assert [r["iteration"] for r in rows] == list(range(1, ITERATIONS + 1))
    assert rows == comparable(read_metrics(reference / "metrics.jsonl"))

    for kind, event in recovered:  # every fault listed, as a death or a hang
        assert event["cause"].startswith("hung" if kind == "freeze" else "died"), (kind, event)
    lost = [(kind, event["role"], event["seconds_lost"]) for kind, event in recovered]
    print(f"\nchaos: {len(recovered)} faults survived, seconds lost {lost}, resume {resume_s:.1f}s")
