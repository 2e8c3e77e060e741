"""The recovery supervisor and Roles.restart on the session's real Ray, with model-free role actors
(seconds, not minutes): which role failed, what comes back, what is restored, when the run stops."""

from __future__ import annotations

import hashlib
import json
import os
import time

import pytest
import ray
from ray.exceptions import RayActorError
from ray.util.placement_group import placement_group

from rlhf_ray.batch import AdapterPayload
from rlhf_ray.config.load import load_config
from rlhf_ray.runtime.layout import RoleLayout
from rlhf_ray.runtime.learner_group import LearnerGroup
from rlhf_ray.runtime.placement import RoleSpec, actor_options
from rlhf_ray.runtime.recovery import RunStopped, Supervisor, read_events, timed_get
from rlhf_ray.runtime.roles import Roles, make_actor

pytestmark = pytest.mark.usefixtures("ray_session")

# Where no hang is caused the call timeout is never waited out: generous, so that a loaded machine
# never turns a slow healthy call into a second failure.
NO_HANG_TIMEOUT_S = 120


@ray.remote
class Counter:
    """Stands in for every role: a learner-like version counter with the calls the supervisor makes."""

    def __init__(self):
        self.version = 0

    def where(self) -> dict:
        return {"pid": os.getpid()}

    def step(self) -> int:
        self.version += 1
        return self.version

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    def checkpoint(self) -> dict:
        return {"learner_state.json": json.dumps({"version": self.version}).encode()}

    def restore(self, files: dict) -> int:
        self.version = json.loads(files["learner_state.json"])["version"]
        return self.version

    def publish(self):
        data = str(self.version).encode()
        payload = AdapterPayload(self.version, hashlib.sha256(data).hexdigest(), data)
        return payload, {"version": payload.version, "sha256": payload.sha256}

    publish = ray.method(num_returns=2)(publish)

    def load_adapter(self, payload: AdapterPayload) -> tuple[int, str]:
        self.version = payload.version
        return payload.version, payload.sha256


def kill(actor) -> None:
    """ray.kill returns before the actor is gone: wait until calls to it fail."""
    ray.kill(actor)
    for _ in range(100):
        try:
            ray.get(actor.where.remote())
        except RayActorError:
            return
        time.sleep(0.1)
    raise AssertionError("the killed actor still answers")


@pytest.fixture
def roles():
    names = ["generator-0", "reward-0", "learner-0"]
    pg = placement_group([{"CPU": 0.01}] * 3, strategy="PACK")
    ray.get(pg.ready())
    options = [actor_options(RoleSpec(n, 0.01, 0), pg, i, "test-sup", "run") for i, n in enumerate(names)]
    makers = {n: lambda o=o: make_actor(Counter, o, ()) for n, o in zip(names[:2], options)}
    makers["learner-0"] = lambda: LearnerGroup([make_actor(Counter, options[2], ())])
    actors = [makers[n]() for n in names[:2]]
    learner = makers["learner-0"]()
    ray.get([a.where.remote() for a in [*actors, *learner.actors]])  # started, as Roles.start leaves them
    specs = [RoleSpec(n, 0.01, 0) for n in names]
    layout = RoleLayout(False, (specs[0],), (specs[1],), (specs[2],))
    # a worker process starts in seconds, or minutes on a machine loaded many times over
    r = Roles(layout, actors[:1], actors[1:2], learner, pg, makers, start_timeout_s=300)
    yield r
    r.stop()


def test_a_killed_learner_comes_back_with_the_committed_state(roles, tmp_path):
    cfg = load_config("configs/smoke.yaml", [f"cluster.call_timeout_s={NO_HANG_TIMEOUT_S}"])
    sup = Supervisor(cfg, roles, tmp_path)
    sup.commit(0, {"iteration": 0})  # as the driver does before its first iteration

    def learner_step():
        return timed_get(roles.learner.actors[0].step.remote(), NO_HANG_TIMEOUT_S)

    assert sup.run(1, learner_step, {"iteration": 1}) == 1
    attempts = []

    def step():
        attempts.append(1)
        if len(attempts) == 1:
            learner_step()  # progress the failure must undo
            kill(roles.learner.actors[0])
        return learner_step()

    first = roles.learner.actors[0]
    assert sup.run(2, step, {"iteration": 2}) == 2  # from version 1 (committed), not 0 (fresh) or 2 (lost)
    assert roles.learner.actors[0] is not first and len(attempts) == 2
    (event,) = read_events(tmp_path / "events.jsonl")
    assert (event["role"], event["iteration"], event["restarts"]) == ("learner-0", 2, 1)
    assert event["cause"].startswith("died")
    assert ray.get(roles.generators[0].step.remote()) == 2  # re-synced to the restored version 1 during recovery
    assert json.loads(sup.state["learner_state.json"])["version"] == 2


def test_a_hung_role_is_found_by_the_call_timeout(roles, tmp_path):
    # The timeout bounds every call of the recovery too (pings, restore, re-sync of the others):
    # long enough that a healthy actor on a loaded machine always answers, far below the hang.
    timeout_s, hang_s = 10, 600
    cfg = load_config("configs/smoke.yaml", [f"cluster.call_timeout_s={timeout_s}"])
    sup = Supervisor(cfg, roles, tmp_path)
    sup.commit(0, {"iteration": 0})
    hung = roles.scorers[0]
    hung.sleep.remote(hang_s)  # busy far longer than any timeout (one call at a time): a hung actor
    others = [roles.generators[0], roles.learner.actors[0]]

    def step():
        return timed_get(roles.scorers[0].where.remote(), timeout_s)

    t0 = time.monotonic()
    assert "pid" in sup.run(1, step, {"iteration": 1})
    assert roles.scorers[0] is not hung and time.monotonic() - t0 < hang_s / 2  # not waited out
    assert [roles.generators[0], roles.learner.actors[0]] == others  # only the hung role was replaced
    (event,) = read_events(tmp_path / "events.jsonl")
    assert event["role"] == "reward-0" and event["cause"].startswith("hung")
    assert event["seconds_lost"] >= timeout_s


def test_more_failures_than_allowed_stop_the_run(roles, tmp_path):
    cfg = load_config(
        "configs/smoke.yaml", [f"cluster.call_timeout_s={NO_HANG_TIMEOUT_S}", "cluster.max_role_restarts=1"]
    )
    sup = Supervisor(cfg, roles, tmp_path)
    sup.commit(0, {"iteration": 0})

    def step():
        kill(roles.scorers[0])
        return timed_get(roles.scorers[0].where.remote(), NO_HANG_TIMEOUT_S)

    with pytest.raises(RunStopped, match="reward-0 failed 2 times.*max_role_restarts=1.*nothing to resume"):
        sup.run(1, step, {"iteration": 1})
    kinds = [e["kind"] for e in read_events(tmp_path / "events.jsonl")]
    assert kinds == ["recovery", "stop"]
