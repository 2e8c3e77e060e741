"""Chaos: a smoke run during which role actors are killed (ray.kill, SIGKILL of the process) or
frozen (SIGSTOP), three faults two iterations apart, then the driver gets SIGTERM (no periodic
checkpoint before it: the stop writes the last completed iteration's, says so in one line and
releases the actors) and the run is resumed from that checkpoint. The final
metrics must equal an uninterrupted run's (run beside it) apart from time/* keys, and events.jsonl
must list a recovery of the right role for every fault. Its cost is process starts, not iterations:
12 role actors (3, 3 for the reference, 3 replacements, 3 on resume) each import torch, transformers
and peft, 10-15 CPU-seconds apiece on a 2-core machine."""

from __future__ import annotations

import os
import random
import re
import signal
import time
from pathlib import Path

import pytest
import ray
from driver_process import comparable, logged, start_driver, wait_for_iteration, wait_released

from rlhf_ray.cli import main
from rlhf_ray.runtime.metrics import read_metrics
from rlhf_ray.runtime.recovery import read_events
from rlhf_ray.store.checkpoint import latest_checkpoint

pytestmark = [pytest.mark.usefixtures("ray_session"), pytest.mark.slow, pytest.mark.soak]

ITERATIONS = 18
ARGS = [
    "--config",
    "configs/smoke.yaml",
    f"ppo.iterations={ITERATIONS}",
    "ppo.checkpoint_every=100",  # none before the SIGTERM: the resume can only start from the one it writes
    "ppo.samples_every=1000",
    # A frozen actor is given up on after 8 s, then the 8 s probe. Healthy calls of this smoke run
    # take well under a second even on the loaded machine; a slow one taken for a hang would only
    # add a recovery, and the metrics would still have to match.
    "cluster.call_timeout_s=8",
    "cluster.max_role_restarts=10",
]
FIRST_FAULT_AFTER, GAP = 2, 2  # a fault after iteration 2, then 2 iterations after each recovery


def warm_gcs_queries() -> None:
    """The first GCS queries of a process take seconds on a loaded machine, iterations of the
    smoke run about one: made before the runs start, not while a fault is due."""
    from ray._private.state import state

    ray.util.list_named_actors(all_namespaces=True)
    state.actor_table(None)


def live_actor(run_name: str, role: str):
    """(handle, pid) of the run's live actor of `role`. The pid comes from the GCS, not from the
    actor: a call to it would queue behind the driver's calls (max_concurrency=1)."""
    from ray._private.state import state

    deadline = time.monotonic() + 300  # the run's first actors, or a replacement, may still be starting
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
        time.sleep(0.5)  # a GCS query each: the first actors take a minute or more to start


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


def plan_faults(seed: int) -> list[tuple[str, str]]:
    """(kind, role) per fault, three in all: every role hit once and every kind used once (ray.kill,
    SIGKILL of the process, a freeze by SIGSTOP), which kind hits which role and the order drawn at random."""
    rng = random.Random(seed)
    roles = ["generator-0", "reward-0", "learner-0"]
    kinds = ["kill", "sigkill", "freeze"]
    rng.shuffle(roles)
    rng.shuffle(kinds)
    return list(zip(kinds, roles))


def inject(target: tuple, kind: str, frozen: list[int]) -> None:
    handle, pid = target
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
    warm_gcs_queries()
    ref_driver = start_driver(reference, ARGS, tmp_path / "reference.log")
    driver = start_driver(run, ARGS, tmp_path / "driver.log")
    recovered = []
    try:
        after = FIRST_FAULT_AFTER
        for kind, role in faults:  # one fault at a time, a few iterations after the last recovery
            # found before its moment (the run moves on meanwhile), hit the moment it comes
            target = live_actor(run.name, role)
            wait_for_iteration(run, after, driver)
            t0 = time.time()
            inject(target, kind, frozen)
            event = wait_for_recovery(run, role, t0, driver)
            recovered.append((kind, event))
            after = event["iteration"] + GAP
        wait_for_iteration(run, after, driver)
        assert after < ITERATIONS - 3, f"the faults took until iteration {after}: too late to stop the run mid-way"
        driver.send_signal(signal.SIGTERM)
        code = driver.wait(timeout=120)
        assert ref_driver.wait(timeout=300) == 0
    finally:
        for proc in (driver, ref_driver):
            if proc.poll() is None:
                proc.kill()
        deadline = time.monotonic() + 30  # Ray force-kills a worker that ignores its exit request
        while any(alive(p) for p in frozen) and time.monotonic() < deadline:
            time.sleep(0.5)
        left = [pid for pid in frozen if alive(pid)]
        for pid in left:  # make sure nothing stays frozen
            os.kill(pid, signal.SIGKILL)
    assert not left, f"the hung actors' processes {left} outlived their replacement"
    # SIGTERM (what `ray job stop` sends): one line saying which iteration is checkpointed and how to
    # resume, that iteration's checkpoint written on the signal (checkpoint_every is 100), the actors
    # and the placement group released by the driver itself.
    output = (tmp_path / "driver.log").read_text()
    stops = [ln for ln in output.splitlines() if ln.startswith("rlhf-ray: stopped by")]
    assert code == 128 + signal.SIGTERM and len(stops) == 1 and "Traceback" not in output, output[-3000:]
    done = int(re.search(r"iteration (\d+) is checkpointed", stops[0]).group(1))
    assert f"rlhf-ray ppo --resume {run}" in stops[0]
    assert after <= done < ITERATIONS and logged(run / "metrics.jsonl") == set(range(1, done + 1))
    assert latest_checkpoint(run).name == f"iter-{done:06d}"
    assert wait_released(run.name)

    t0 = time.perf_counter()
    # the run's own 8 s call timeout: the first restore (optimizer state) is bounded by start_timeout_s
    assert main(["ppo", "--resume", str(run)]) == 0
    resume_s = time.perf_counter() - t0
    rows = comparable(read_metrics(run / "metrics.jsonl"))
    assert [r["iteration"] for r in rows] == list(range(1, ITERATIONS + 1))
    assert rows == comparable(read_metrics(reference / "metrics.jsonl"))

    assert len(recovered) == 3 and {k for k, _ in recovered} == {"kill", "sigkill", "freeze"}
    assert {e["role"] for _, e in recovered} == {"generator-0", "reward-0", "learner-0"}
    for kind, event in recovered:  # every fault listed, as a death or a hang (after the call timeout)
        assert event["cause"].startswith("hung" if kind == "freeze" else "died"), (kind, event)
        assert event["seconds_lost"] >= (8 if kind == "freeze" else 0), (kind, event)
    lost = [(kind, event["role"], event["seconds_lost"]) for kind, event in recovered]
    print(f"\nchaos: {len(recovered)} faults survived, seconds lost {lost}, resume {resume_s:.1f}s")
