"""The running roles of one PPO run: start them in one placement group, restart one, stop them all.

Which actors exist comes from the run's RoleLayout (runtime.layout): generators and reward scorers
are single actors; the learner is a LearnerGroup (one actor, or N data-parallel ones presented as
one). Every wait for an actor is bounded (cluster.start_timeout_s, cluster.call_timeout_s). Actor
and placement-group names are per run, so concurrent jobs on one cluster never collide. The driver
reaches the roles only through this object."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import ray
from ray.util.placement_group import remove_placement_group

from rlhf_ray.actors.remote import FusedPolicyActor, GeneratorActor, LearnerActor, RewardScorerActor
from rlhf_ray.config.schema import Config
from rlhf_ray.envs.runner import EnvSpec
from rlhf_ray.errors import StaleGeneratorError
from rlhf_ray.runtime.layout import RoleLayout, role_layout
from rlhf_ray.runtime.learner_group import LearnerGroup
from rlhf_ray.runtime.placement import actor_options, create_placement, run_id
from rlhf_ray.runtime.recovery import timed_get
from rlhf_ray.store.artifacts import ModelRef
from rlhf_ray.store.checkpoint import atomic_write


@dataclass
class Roles:
    layout: RoleLayout
    generators: list  # actors answering generate (fused: the policy host); held in place by the rollout source
    scorers: list
    learner: LearnerGroup
    placement_group: object
    # role name -> () -> a fresh actor in its bundle; every learner name -> () -> a fresh LearnerGroup
    makers: dict
    start_timeout_s: float  # a (re)started role must have loaded its model within this

    @staticmethod
    def start(cfg: Config, policy: ModelRef, reward: ModelRef, run_dir: Path, env: EnvSpec | None = None) -> "Roles":
        """Start every role of the planned layout in one placement group; wait until all models are loaded.
        env: the run's environments, for whichever actors generate (None: single-turn)."""
        layout = role_layout(cfg)
        run = run_id(run_dir)  # actor and placement group names are per run: concurrent jobs never collide
        pg = create_placement(layout.bundles, cfg.cluster, name=f"rlhf_ray/{run}")
        opts = {s.name: actor_options(s, pg, i, cfg.cluster.namespace, run) for i, s in enumerate(layout.bundles)}
        makers = {s.name: partial(make_actor, GeneratorActor, opts[s.name], (cfg, policy, rank, None, env))
                  for rank, s in enumerate(layout.generators)}  # fmt: skip
        makers.update(
            {s.name: partial(make_actor, RewardScorerActor, opts[s.name], (cfg, reward)) for s in layout.scorers}
        )
        host = FusedPolicyActor if layout.fused else LearnerActor
        group = partial(LearnerGroup.start, cfg, policy, [opts[s.name] for s in layout.learners], host, env)
        makers.update({s.name: group for s in layout.learners})
        started: list = []
        try:  # an actor failing in its constructor must not leak the group or the other actors
            started = [makers[s.name]() for s in [*layout.generators, *layout.scorers]]
            learner = group()
            started += learner.actors
            places = timed_get([a.where.remote() for a in started], cfg.cluster.start_timeout_s)  # models loaded
        except BaseException:
            for actor in started:
                ray.kill(actor)
            remove_placement_group(pg)
            raise
        gens = list(learner.actors) if layout.fused else started[: len(layout.generators)]
        scorers = started[len(layout.generators) : len(layout.generators) + len(layout.scorers)]
        roles = Roles(layout, gens, scorers, learner, pg, makers, cfg.cluster.start_timeout_s)
        record = [
            {"actor": s.name, "name": opts[s.name]["name"], "num_gpus": s.num_gpus, "num_cpus": s.num_cpus,
             "bundle": layout.bundle_of(s.name), **place}
            for s, place in zip(layout.actors, places)
        ]  # fmt: skip
        atomic_write(run_dir / "placement.json", json.dumps(record, indent=2).encode())
        return roles

    def named(self) -> dict:
        """Every distinct actor by role name (a fused host once, under its learner name)."""
        own_generators = [] if self.layout.fused else self.generators
        actors = [*own_generators, *self.scorers, *self.learner.actors]
        return {spec.name: actor for spec, actor in zip(self.layout.actors, actors)}

    def all(self) -> list:
        return list(self.named().values())

    def restart(self, name: str) -> None:
        """Replace the actor called `name` by a fresh one in its bundle (after a death or a hang).
        A learner is restarted as a whole group: data-parallel ranks share one process group."""
        learners = [s.name for s in self.layout.learners]
        if name in learners:
            for actor in self.learner.actors:
                ray.kill(actor)
            self.learner = retry_while_name_taken(self.makers[name])
            timed_get([a.where.remote() for a in self.learner.actors], self.start_timeout_s)
            if self.layout.fused:
                self.generators[:] = self.learner.actors  # in place: the rollout source holds this list
            return
        ray.kill(self.named()[name])
        new = retry_while_name_taken(self.makers[name])
        timed_get(new.where.remote(), self.start_timeout_s)  # the constructor finished: the model is loaded
        scorers = [s.name for s in self.layout.scorers]
        if name in scorers:
            self.scorers[scorers.index(name)] = new
        else:
            self.generators[[s.name for s in self.layout.generators].index(name)] = new

    def sync(self, timeout_s: float) -> None:
        """Push the learner's current adapter to every generator (e.g. after a restart)."""
        payload_ref, receipt_ref = self.learner.publish()
        receipt = timed_get(receipt_ref, timeout_s)
        sync_adapter(self, payload_ref, receipt["version"], receipt["sha256"], timeout_s)

    def stop(self) -> None:
        for actor in self.all():
            ray.kill(actor)
        remove_placement_group(self.placement_group)


def make_actor(cls, options: dict, args: tuple):
    return cls.options(**options).remote(*args)


def retry_while_name_taken(make, wait_s: float = 30.0):
    """A killed named actor frees its name asynchronously; its successor takes the same name."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return make()
        except ValueError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def sync_adapter(roles: Roles, payload_ref, version: int, sha256: str, timeout_s: float) -> None:
    """Push an adapter (by ref) to every generator; each must confirm the version and content hash."""
    for got_version, got_sha in timed_get([g.load_adapter.remote(payload_ref) for g in roles.generators], timeout_s):
        if (got_version, got_sha) != (version, sha256):
            raise StaleGeneratorError(
                f"generator confirmed adapter v{got_version} {got_sha[:12]}, expected v{version} {sha256[:12]}"
            )
