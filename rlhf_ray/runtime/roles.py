"""The running roles of one PPO run: start them in one placement group, restart one, stop them all.

Generators and reward scorers are single actors; the learner is a LearnerGroup (one actor, or N
data-parallel ones presented as one). Actor and placement-group names are per run, so concurrent
jobs on one cluster never collide. The driver reaches the roles only through this object."""

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
from rlhf_ray.errors import StaleGeneratorError
from rlhf_ray.runtime.layout import layout_specs, resolved_layout
from rlhf_ray.runtime.learner_group import LearnerGroup
from rlhf_ray.runtime.placement import actor_options, create_placement, run_id
from rlhf_ray.runtime.recovery import timed_get
from rlhf_ray.store.artifacts import ModelRef
from rlhf_ray.store.checkpoint import atomic_write

LEARNER = "learner"  # key of the learner group's maker in Roles.makers


@dataclass
class Roles:
    generators: list
    scorers: list
    learner: LearnerGroup
    placement_group: object
    # role name -> () -> a fresh actor in the same bundle; LEARNER -> () -> a fresh LearnerGroup
    makers: dict
    learner_names: list[str]
    fused: bool = False  # cluster.layout=fused: the learner's one actor is the generator too

    @staticmethod
    def start(cfg: Config, policy: ModelRef, reward: ModelRef, run_dir: Path) -> "Roles":
        """Start every role (layout as planned: see rlhf_ray.runtime.layout), wait until all models are loaded."""
        fused = resolved_layout(cfg) == "fused"
        specs = layout_specs(cfg)
        run = run_id(run_dir)  # actor and placement group names are per run: concurrent jobs never collide
        pg = create_placement(specs, cfg.cluster, name=f"rlhf_ray/{run}")
        opts = [actor_options(s, pg, i, cfg.cluster.namespace, run) for i, s in enumerate(specs)]
        n_gen = 0 if fused else cfg.cluster.num_generators
        n_sc = cfg.cluster.num_scorers
        args = [(GeneratorActor, (cfg, policy, i)) for i in range(n_gen)] + [(RewardScorerActor, (cfg, reward))] * n_sc
        if fused:  # the host's bundle comes first (PACK puts it on the GPU); list it last, as a learner
            opts, specs = opts[1:] + opts[:1], specs[1:] + specs[:1]
        order = specs[: n_gen + n_sc]
        makers = {s.name: partial(make_actor, cls, o, a) for s, o, (cls, a) in zip(specs, opts, args)}
        makers[LEARNER] = partial(
            LearnerGroup.start, cfg, policy, opts[n_gen + n_sc :], FusedPolicyActor if fused else LearnerActor
        )
        actors: list = []
        learner = None
        try:  # an actor failing in its constructor must not leak the group or the other actors
            actors = [makers[s.name]() for s in order]
            learner = makers[LEARNER]()
            places = ray.get([a.where.remote() for a in [*actors, *learner.actors]])  # waits for every model to load
        except BaseException:
            for actor in [*actors, *(learner.actors if learner else [])]:
                ray.kill(actor)
            remove_placement_group(pg)
            raise
        gens = list(learner.actors) if fused else actors[:n_gen]
        roles = Roles(gens, actors[n_gen:], learner, pg, makers, [s.name for s in specs[n_gen + n_sc :]], fused)
        layout = [
            {"actor": s.name, "name": o["name"], "num_gpus": s.num_gpus, "num_cpus": s.num_cpus, **p}
            for s, o, p in zip(specs, opts, places)
        ]
        atomic_write(run_dir / "placement.json", json.dumps(layout, indent=2).encode())
        return roles

    def named(self) -> dict:
        """Every distinct actor by role name (a fused host once, under its learner name)."""
        names = [n for n in self.makers if n != LEARNER]
        own = self.scorers if self.fused else [*self.generators, *self.scorers]
        return {**dict(zip(names, own)), **dict(zip(self.learner_names, self.learner.actors))}

    def all(self) -> list:
        return list(self.named().values())

    def restart(self, name: str) -> None:
        """Replace the actor called `name` by a fresh one in its bundle (after a death or a hang).
        A learner is restarted as a whole group: data-parallel ranks share one process group."""
        if name in self.learner_names:
            for actor in self.learner.actors:
                ray.kill(actor)
            self.learner = retry_while_name_taken(self.makers[LEARNER])
            ray.get([a.where.remote() for a in self.learner.actors])
            if self.fused:
                self.generators[:] = self.learner.actors  # in place: the rollout source holds this list
            return
        ray.kill(self.named()[name])
        new = retry_while_name_taken(self.makers[name])
        ray.get(new.where.remote())  # the constructor finished: the model is loaded
        k = [n for n in self.makers if n != LEARNER].index(name)
        if self.fused or k >= len(self.generators):
            self.scorers[k - (0 if self.fused else len(self.generators))] = new
        else:
            self.generators[k] = new

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
