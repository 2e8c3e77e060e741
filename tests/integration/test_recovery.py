"""Faults caused for real on the session's local Ray, compared with one uninterrupted reference run:
a SIGKILLed driver, a killed learner at the last iteration, a role dying too often, a constructor
that fails, NaN rewards. Killed, SIGKILLed and frozen role actors mid-run: tests/integration/test_chaos.py.
Recovery redoes the interrupted iteration from the learner state the driver holds, so every run
must reproduce the reference's metrics exactly (apart from time/* keys)."""

from __future__ import annotations

import json
import shutil
import signal
import threading
from pathlib import Path

import pytest
import ray
import torch
from driver_process import comparable, logged, start_driver, wait_for_iteration
from ray.exceptions import RayActorError
from safetensors.torch import load as st_load

from rlhf_ray.cli import main
from rlhf_ray.runtime.metrics import read_metrics
from rlhf_ray.runtime.recovery import read_events
from rlhf_ray.store.checkpoint import latest_checkpoint

pytestmark = pytest.mark.usefixtures("ray_session")


ARGS = ["--config", "configs/smoke.yaml", "ppo.iterations=3"]  # the smoke config for 3 iterations


def ppo(run: Path, *overrides: str) -> list[str]:
    """`rlhf-ray ppo` arguments."""
    return ["ppo", "--run-dir", str(run), *ARGS, *overrides]


@pytest.fixture(scope="module")
def reference_rows(tmp_path_factory) -> list[dict]:
    run = tmp_path_factory.mktemp("reference") / "run"
    assert main(ppo(run)) == 0
    return read_metrics(run / "metrics.jsonl")


@pytest.fixture(scope="module")
def reference(reference_rows) -> list[dict]:
    return comparable(reference_rows)


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


def test_resume_after_sigkill_of_the_driver_reproduces_the_metrics(tmp_path, reference):
    run = tmp_path / "run"
    # attached to the session's Ray, as a `ray job submit` driver is to its cluster (Ray then ends
    # the dead driver's actors itself); its own local Ray only added a head start to the test
    driver = start_driver(run, ARGS, tmp_path / "driver.log")
    try:
        wait_for_iteration(run, 2, driver)
        driver.send_signal(signal.SIGKILL)  # mid-run: iteration 2 logged, its checkpoint maybe not yet
        driver.wait(timeout=30)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert logged(run / "metrics.jsonl") == {1, 2}
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
