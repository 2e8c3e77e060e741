"""The role layout of a run: every actor by role (generators, scorers, learners), with its
resources and its placement bundle, built once from the config and the memory plan.

`separate`: one actor per role, each with its own base. `fused`: one policy host serves both the
generator and the learner calls over one base (the learner group's one actor is the generator too).
The driver gets the same handles either way (generators, scorers, learner) and never branches on it;
`Roles`, the learner group and recovery take their part of the layout by name."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from rlhf_ray.config.schema import Config
from rlhf_ray.runtime.placement import RoleSpec
from rlhf_ray.runtime.plan import make_plan
from rlhf_ray.store.checkpoint import atomic_write


@dataclass(frozen=True)
class RoleLayout:
    fused: bool
    generators: tuple[RoleSpec, ...]  # empty when fused: the policy host answers the generate calls
    scorers: tuple[RoleSpec, ...]
    learners: tuple[RoleSpec, ...]  # data-parallel ranks; fused: the one policy host

    @property
    def bundles(self) -> list[RoleSpec]:
        """The placement group's bundles in order: a fused host first (PACK places the GPU-heavy one first)."""
        if self.fused:
            return [*self.learners, *self.scorers]
        return [*self.generators, *self.scorers, *self.learners]

    @property
    def actors(self) -> list[RoleSpec]:
        """Every distinct actor, generators then scorers then learners (placement.json's order)."""
        return [*self.generators, *self.scorers, *self.learners]

    def bundle_of(self, name: str) -> int:
        return next(i for i, spec in enumerate(self.bundles) if spec.name == name)


def role_layout(cfg: Config, kind: str | None = None) -> RoleLayout:
    """The layout `kind` (default: cluster.layout, with `auto` decided by the memory plan)."""
    c = cfg.cluster
    kind = kind or resolved_layout(cfg)
    scorers = tuple(RoleSpec(f"reward-{i}", c.actor_cpus, c.scorer_gpus) for i in range(c.num_scorers))
    if kind == "fused":
        return RoleLayout(True, (), scorers, (RoleSpec("policy-0", c.actor_cpus, cfg.fused_gpus()),))
    generators = tuple(RoleSpec(f"generator-{i}", c.actor_cpus, c.generator_gpus) for i in range(c.num_generators))
    learners = tuple(RoleSpec(f"learner-{i}", c.actor_cpus, c.learner_gpus) for i in range(c.num_learners))
    return RoleLayout(False, generators, scorers, learners)


def resolved_layout(cfg: Config) -> str:
    return cfg.cluster.layout if cfg.cluster.layout != "auto" else make_plan(cfg).chosen


def planned(cfg: Config, run_dir: Path) -> Config:
    """Run the memory planner (refuses a config that cannot fit), write plan.json, fix the layout."""
    plan = make_plan(cfg)
    atomic_write(Path(run_dir) / "plan.json", json.dumps(plan.to_json(), indent=2).encode())
    return dataclasses.replace(cfg, cluster=dataclasses.replace(cfg.cluster, layout=plan.chosen))
