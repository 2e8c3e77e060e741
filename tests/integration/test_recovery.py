"""Faults caused for real on the session's local Ray, compared with one uninterrupted reference run:
killed actors (ray.kill), a hung actor (its process stopped with SIGSTOP), a SIGKILLed driver.
Recovery redoes the interrupted iteration from the learner state the driver holds, so every run
must reproduce the reference's metrics exactly (apart from time/* keys)."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import ray
import torch
from ray.exceptions import RayActorError
from safetensors.torch import load as st_load

from rlhf_ray.cli import main
from rlhf_ray.runtime.metrics import read_metrics
from rlhf_ray.runtime.recovery import read_events
from rlhf_ray.store.checkpoint import latest_checkpoint

pytestmark = pytest.mark.usefixtures("ray_session")

REPO = Path(__file__).resolve().parents[2]


def ppo(run: Path, *overrides: str) -> list[str]:
    """`rlhf-ray ppo` arguments: the smoke config for 3 iterations."""
    return ["ppo", "--config", "configs/smoke.yaml", "--run-dir", str(run), "ppo.iterations=3", *overrides]


def comparable(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows]


@pytest.fixture(scope="module")
def reference_rows(tmp_path_factory) -> list[dict]:
    run = tmp_path_factory.mktemp("reference") / "run"
    assert main(ppo(run)) == 0
    return read_metrics(run / "metrics.jsonl")


@pytest.fixture(scope="module")
def reference(reference_rows) -> list[dict]:
    return comparable(reference_rows)


@pytest.fixture(scope="module")
def call_timeout_s(reference_rows) -> int:
    """A call timeout that only a hang exceeds: 3x the slowest call of the reference run (at this
    machine's current load), at least 8 s. It bounds every wait of a run, the recovery's included."""
    phases = ("generate", "score", "learn", "sync", "snapshot")
    slowest = max(r.get(f"time/{p}_s", 0.0) for r in reference_rows for p in phases)
    return max(8, math.ceil(3 * slowest))


def wait_for_iteration(run: Path, iteration: int, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if iteration in _logged(run / "metrics.jsonl"):
            return
        time.sleep(0.02)
    raise TimeoutError(f"iteration {iteration} never reached {run}")


def _logged(path: Path) -> set[int]:
    """Iterations in a metrics.jsonl being written (a line still being appended is ignored)."""
    done = set()
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            done.add(json.loads(line)["iteration"])
        except ValueError:
            pass
    return done


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


def actor_pid(role: str, timeout_s: float = 120) -> int:
    """The pid of the live actor of `role`, from the GCS: a call to the actor would queue behind the
    driver's (one call at a time), and the pid is wanted the moment a fault is due."""
    from ray._private.state import state

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for a in ray.util.list_named_actors(all_namespaces=True):
            if a["namespace"] == "rlhf_ray" and a["name"].endswith("/" + role):
                handle = ray.get_actor(a["name"], namespace="rlhf_ray")
                record = state.actor_table(handle._actor_id.hex())
                if record and record["State"] == "ALIVE":
                    return record["Pid"]
        time.sleep(0.2)
    raise LookupError(f"no live {role} actor")


def actor(role: str):
    """The running actor of `role` (names are per run: `<run>/<role>`)."""
    (name,) = [
        a["name"]
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a["namespace"] == "rlhf_ray" and a["name"].endswith("/" + role)
    ]
    return ray.get_actor(name, namespace="rlhf_ray")


class Faults(threading.Thread):
    """Runs `plan` = [(after iteration, action)] against a run started in this process."""

    def __init__(self, run: Path, plan):
        super().__init__(daemon=True)
        self.run_dir, self.plan, self.error = run, plan, None

    def run(self):
        try:
            for after, action in self.plan:
                if after is not None:  # None: the action waits for its moment itself
                    wait_for_iteration(self.run_dir, after)
                action()
        except Exception as exc:  # reported by the test, not lost in the thread
            self.error = exc


def test_killed_generator_scorer_and_learner_are_restarted(tmp_path, reference):
    run = tmp_path / "run"
    faults = Faults(
        run,
        [
            (1, lambda: (ray.kill(actor("generator-0")), ray.kill(actor("reward-0")))),
            (2, lambda: ray.kill(actor("learner-0"))),
        ],
    )
    faults.start()
    assert main(ppo(run)) == 0
    faults.join()
    assert faults.error is None
    events = read_events(run / "events.jsonl")
    assert {(e["role"], e["iteration"]) for e in events} == {("generator-0", 2), ("reward-0", 2), ("learner-0", 3)}
    assert all(e["kind"] == "recovery" and e["cause"].startswith("died") and e["seconds_lost"] > 0 for e in events)
    rows = comparable(read_metrics(run / "metrics.jsonl"))
    # The learner's successor resumed from iteration 2's state: a fresh learner would report
    # policy/version 1 and a different adapter; every value matches the uninterrupted run.
    assert [r["policy/version"] for r in rows] == [1, 2, 3]
    assert rows == reference
    assert not our_actors() and not live_groups()  # replaced actors and the group are all gone


def test_hung_generator_times_out_and_is_replaced(tmp_path, reference, call_timeout_s):
    run = tmp_path / "run"
    stopped = []

    def hang_generator():
        pid = actor_pid("generator-0")  # known before iteration 1 ends: the hang lands in iteration 2
        wait_for_iteration(run, 1)
        os.kill(pid, signal.SIGSTOP)  # alive to Ray, but answers nothing: a real hang
        stopped.append(pid)

    faults = Faults(run, [(None, hang_generator)])
    faults.start()
    try:
        assert main(ppo(run, f"cluster.call_timeout_s={call_timeout_s}")) == 0
    finally:
        faults.join()
        deadline = time.monotonic() + 30  # Ray force-kills a worker that ignores the exit request after a grace period
        while any(_alive(p) for p in stopped) and time.monotonic() < deadline:
            time.sleep(0.5)
        left = [pid for pid in stopped if _alive(pid)]
        for pid in left:
            os.kill(pid, signal.SIGKILL)
    assert faults.error is None and stopped and not left  # the restart killed the hung process
    (event,) = read_events(run / "events.jsonl")  # the hang only: no healthy call ran out of time
    assert (event["role"], event["iteration"]) == ("generator-0", 2) and event["cause"].startswith("hung")
    assert event["seconds_lost"] >= call_timeout_s  # the call timeout fired (then the probe)
    assert comparable(read_metrics(run / "metrics.jsonl")) == reference


def test_resume_after_sigkill_of_the_driver_reproduces_the_metrics(tmp_path, reference):
    run = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # its own local Ray, as a user's run
    env["PYTHONPATH"] = str(REPO)
    driver = subprocess.Popen(
        [sys.executable, "-m", "rlhf_ray.cli", *ppo(run)],
        cwd=REPO,
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_iteration(run, 2)
        driver.send_signal(signal.SIGKILL)  # mid-run: iteration 2 logged, its checkpoint maybe not yet
        driver.wait(timeout=30)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert _logged(run / "metrics.jsonl") == {1, 2}
    assert main(["ppo", "--resume", str(run)]) == 0
    assert comparable(read_metrics(run / "metrics.jsonl")) == reference


def our_actors() -> list:
    return [a for a in ray.util.list_named_actors(all_namespaces=True) if a["namespace"] == "rlhf_ray"]


def live_groups() -> list:
    return [g for g in ray.util.placement_group_table().values() if g["state"] != "REMOVED"]


def test_a_role_dying_too_often_stops_the_run_resumably(tmp_path, capsys):
    run = tmp_path / "run"
    faults = Faults(run, [(1, lambda: ray.kill(actor("learner-0")))])
    faults.start()
    code = main(ppo(run, "cluster.max_role_restarts=0"))
    faults.join()
    err = capsys.readouterr().err
    errors = [ln for ln in err.splitlines() if ln.startswith("rlhf-ray: error:")]
    assert code == 2 and len(errors) == 1 and "Traceback" not in err
    assert "learner-0 failed 1 times" in errors[0] and "--resume" in errors[0]
    (stop,) = read_events(run / "events.jsonl")
    assert stop["kind"] == "stop" and stop["role"] == "learner-0"
    # the last completed iteration is checkpointed, intact: the stopped run can be resumed
    assert latest_checkpoint(run).name == f"iter-{stop['iteration'] - 1:06d}"
    assert not our_actors() and not live_groups()


def test_an_actor_failing_in_its_constructor_leaks_nothing(tmp_path, tiny_classifier):
    weightless = tmp_path / "weightless"  # passes the up-front config check, fails to load in the actor
    weightless.mkdir()
    for f in Path(tiny_classifier).iterdir():
        if f.suffix != ".safetensors":
            shutil.copy(f, weightless / f.name)
    with pytest.raises(RayActorError):
        main(ppo(tmp_path / "run", f"reward.model={weightless}"))
    assert not our_actors() and not live_groups()


def test_nan_rewards_are_skipped_when_configured(tmp_path, tiny_classifier):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    broken = tmp_path / "nan-classifier"
    model = AutoModelForSequenceClassification.from_pretrained(tiny_classifier)
    with torch.no_grad():
        model.classifier.weight.fill_(float("nan"))
    model.save_pretrained(broken)
    AutoTokenizer.from_pretrained(tiny_classifier).save_pretrained(broken)
    run = tmp_path / "run"
    assert main(ppo(run, f"reward.model={broken}", "ppo.on_nonfinite=skip")) == 0
    events = read_events(run / "events.jsonl")
    assert [(e["kind"], e["iteration"], e["action"]) for e in events] == [("nonfinite", i, "skip") for i in (1, 2, 3)]
    assert not (run / "metrics.jsonl").exists()  # no batch was learned from
    final = latest_checkpoint(run)
    lora_b = [v for k, v in st_load((final / "policy.safetensors").read_bytes()).items() if "lora_B" in k]
    assert lora_b and all(torch.count_nonzero(v) == 0 for v in lora_b)  # LoRA B still at its zero init
    assert json.loads((final / "learner_state.json").read_text())["version"] == 0
