"""Keep a PPO run going when a role's actor dies, hangs or meets a non-finite batch.

The driver runs each iteration as `supervisor.run(iteration, step, driver_state)`. After every
completed iteration the supervisor copies the learner's full state (adapter, value head,
optimizer, KL controller) into driver memory, so neither the learner's process nor its node can
take it away. When a call fails with a dead actor or does not answer within
`cluster.call_timeout_s`, the supervisor finds the failed roles, has `roles.restart(name)` bring
each back in its own placement-group bundle, puts the learner back to the last completed
iteration, re-syncs every generator (version + hash confirmed) and redoes the iteration.
Each recovery is one line in RUN_DIR/events.jsonl."""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from pathlib import Path
from typing import Callable, Protocol, TypeVar

import ray
from ray.exceptions import GetTimeoutError, ObjectLostError, OwnerDiedError, RayActorError, RayTaskError

from rlhf_ray.config.schema import Config
from rlhf_ray.errors import NonFiniteError, UserError
from rlhf_ray.runtime.stopping import deferred
from rlhf_ray.store.checkpoint import checkpoint_problem, write_checkpoint

log = logging.getLogger(__name__)
T = TypeVar("T")

# Failures of an actor's process or node (not of the code it ran): these are recovered.
ROLE_FAILURES = (RayActorError, GetTimeoutError, ObjectLostError, OwnerDiedError)


class RoleTimeout(GetTimeoutError):
    """An actor call did not answer within cluster.call_timeout_s."""


class RunStopped(UserError):
    """A role failed more often than cluster.max_role_restarts allows."""


class Restartable(Protocol):
    """What the supervisor needs from the driver's Roles."""

    learner: object  # a LearnerGroup: checkpoint() and restore(files) return refs

    def named(self) -> dict[str, object]: ...

    def restart(self, name: str) -> None: ...

    def sync(self, timeout_s: float) -> None: ...


def timed_get(refs, timeout_s: float):
    """ray.get that raises RoleTimeout (a recovered failure) instead of blocking on a hung actor."""
    try:
        return ray.get(refs, timeout=timeout_s)
    except GetTimeoutError:
        raise RoleTimeout(f"no answer within cluster.call_timeout_s={timeout_s:g}s") from None


class EventLog:
    """RUN_DIR/events.jsonl: one JSON line per recovery, skipped batch or stop."""

    def __init__(self, path: Path):
        self.path = path

    def write(self, **event) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps({"time": time.time(), **event}) + "\n")


def read_events(path: Path) -> list[dict]:
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()] if path.exists() else []


def _cause(exc: BaseException) -> BaseException:
    """The error inside Ray's task wrapper (a learner's ray.get of a lost rollout arrives wrapped)."""
    while isinstance(exc, RayTaskError) and isinstance(exc.cause, BaseException):
        exc = exc.cause
    return exc


class Supervisor:
    def __init__(self, cfg: Config, roles: Restartable, run_dir: Path):
        self.cfg, self.roles, self.run_dir = cfg, roles, run_dir
        self.timeout_s = cfg.cluster.call_timeout_s
        self.events = EventLog(run_dir / "events.jsonl")
        self.restarts: Counter[str] = Counter()
        self.state: dict[str, bytes] = {}  # learner checkpoint files + driver_state.json, last completed iteration
        self.state_iteration = 0
        self.snapshot_s = 0.0  # cost of the last snapshot (reported as time/snapshot_s)

    def commit(self, iteration: int, driver_state: dict | Callable[[], dict]) -> None:
        """Copy the learner's state into driver memory: the point every recovery returns to.
        `driver_state` may be a callable: read after the step (the prompt stream has moved on)."""
        driver_state = driver_state() if callable(driver_state) else driver_state
        t0 = time.perf_counter()
        files = timed_get(self.roles.learner.checkpoint(), self.timeout_s)
        files["driver_state.json"] = json.dumps(driver_state).encode()
        with deferred():  # never a state of one iteration labelled with another
            self.state, self.state_iteration = files, iteration
        self.snapshot_s = time.perf_counter() - t0

    def run(
        self,
        iteration: int,
        step: Callable[[], T],
        driver_state: dict | Callable[[], dict],
        record: Callable[[T], None] | None = None,
    ) -> T | None:
        """step() then commit() and record(result); on a role failure restart, restore and redo;
        None = batch skipped. A failure during a recovery goes round the loop again (and counts
        against its role). A stop signal waits for commit + record: a checkpoint written on stop
        is never of an iteration whose metrics were not logged."""
        failure: BaseException | None = None
        lost_since = 0.0  # start of the attempt that failed: seconds lost are counted from there
        while True:
            t0 = time.perf_counter()
            try:
                if failure is not None:
                    self._recover(iteration, failure, lost_since)
                    failure = None
                result = step()
                with deferred():
                    self.commit(iteration, driver_state)
                    if record is not None:
                        record(result)
                return result
            except Exception as exc:  # noqa: BLE001 - sorted below; anything else propagates
                cause = _cause(exc)
                if isinstance(cause, NonFiniteError):
                    return self._nonfinite(iteration, cause, t0, driver_state)
                if not isinstance(cause, ROLE_FAILURES):
                    raise
                failure, lost_since = cause, (lost_since if failure is not None else t0)

    def _recover(self, iteration: int, exc: BaseException, t0: float) -> None:
        failed = self.failed_roles() or {"unknown": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
        for name, why in failed.items():
            self.restarts[name] += 1
            if self.restarts[name] > self.cfg.cluster.max_role_restarts:
                self._stop(iteration, name, why)
            log.warning("iteration %d: %s failed (%s); restarting it", iteration, name, why)
            if name != "unknown":
                self.roles.restart(name)
        try:
            self.restore()
        finally:  # logged also when the restore fails and the recovery goes round again: no fault unlisted
            for name, why in failed.items():
                self.events.write(
                    kind="recovery",
                    role=name,
                    iteration=iteration,
                    cause=why,
                    seconds_lost=round(time.perf_counter() - t0, 3),
                    restarts=self.restarts[name],
                )

    def failed_roles(self) -> dict[str, str]:
        """Ping every actor: dead ones and ones that do not answer within the call timeout."""
        named = self.roles.named()
        pings = {name: actor.where.remote() for name, actor in named.items()}
        ready, _ = ray.wait(list(pings.values()), num_returns=len(pings), timeout=self.timeout_s)
        failed = {}
        for name, ping in pings.items():
            if ping not in ready:
                failed[name] = f"hung: no answer within cluster.call_timeout_s={self.timeout_s:g}s"
                continue
            try:
                ray.get(ping)
            except RayActorError as exc:
                failed[name] = f"died: {str(exc).splitlines()[0][:200]}"
        return failed

    def restore(self) -> None:
        """Learner back to the last completed iteration; every generator re-synced to it."""
        timed_get(self.roles.learner.restore(self.state), self.timeout_s)
        self.roles.sync(self.timeout_s)

    def _nonfinite(self, iteration: int, exc: NonFiniteError, t0: float, driver_state) -> None:
        action = self.cfg.ppo.on_nonfinite
        self.events.write(
            kind="nonfinite",
            role="learner",
            iteration=iteration,
            cause=str(exc),
            action=action,
            seconds_lost=round(time.perf_counter() - t0, 3),
        )
        if action == "stop":
            raise exc
        self.restore()  # undo minibatch steps taken before the bad one
        self.commit(iteration, driver_state)  # the batch is consumed: a resume continues after it
        log.warning("iteration %d skipped: %s", iteration, exc)
        return None

    def save_latest(self) -> tuple[int, Path | None]:
        """Checkpoint the last completed iteration (held in memory) unless one on disk has it already.
        Returns (iteration, its checkpoint); (0, None) when no iteration completed."""
        done = self.state_iteration
        if not self.state or done <= 0:
            return 0, None
        path = self.run_dir / "checkpoints" / f"iter-{done:06d}"
        if path.is_dir() and checkpoint_problem(path) is None:
            return done, path
        return done, write_checkpoint(self.run_dir, done, self.state, keep=self.cfg.ppo.keep_checkpoints)

    def _stop(self, iteration: int, name: str, why: str) -> None:
        done, _ = self.save_latest()
        self.events.write(kind="stop", role=name, iteration=iteration, cause=why, restarts=self.restarts[name])
        then = (
            f"iteration {done} is checkpointed: continue with rlhf-ray ppo --resume {self.run_dir}"
            if done
            else "no iteration completed, nothing to resume"
        )
        raise RunStopped(
            f"{name} failed {self.restarts[name]} times, more than cluster.max_role_restarts="
            f"{self.cfg.cluster.max_role_restarts} (last: {why}); {then}"
        )
