"""Which processes answer the role calls: one actor per role (`separate`) or one fused policy host
serving both the generator and the learner calls over one base (`fused`). The driver gets the same
handles either way (generators, scorers, learner) and never branches on the layout."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from rlhf_ray.config import Config
from rlhf_ray.placement import RoleSpec, actor_options, create_placement, role_specs


@dataclass
class StartedRoles:
    generators: list
    scorers: list
    learner: object
    placement_group: object
    specs: list[RoleSpec]  # one per distinct actor, in the order of Roles.all()


def resolved_layout(cfg: Config) -> str:
    if cfg.cluster.layout != "auto":
        return cfg.cluster.layout
    from rlhf_ray.plan import make_plan

    return make_plan(cfg).chosen


def planned(cfg: Config, run_dir: Path) -> Config:
    """Run the memory planner (refuses a config that cannot fit), write plan.json, fix the layout."""
    from rlhf_ray.checkpoint import atomic_write
    from rlhf_ray.plan import make_plan

    plan = make_plan(cfg)
    atomic_write(Path(run_dir) / "plan.json", json.dumps(plan.to_json(), indent=2).encode())
    return dataclasses.replace(cfg, cluster=dataclasses.replace(cfg.cluster, layout=plan.chosen))


def layout_specs(cfg: Config, layout: str | None = None) -> list[RoleSpec]:
    c = cfg.cluster
    if (layout or resolved_layout(cfg)) == "fused":
        from rlhf_ray.actors.fused import fused_gpus

        scorers = [RoleSpec(f"reward-{i}", c.actor_cpus, c.scorer_gpus) for i in range(c.num_scorers)]
        return [RoleSpec("policy-0", c.actor_cpus, fused_gpus(cfg)), *scorers]
    return role_specs(c)


def start_roles(cfg: Config, policy_path: str, reward_path: str) -> StartedRoles:
    from rlhf_ray.actors.remote import FusedPolicyActor, GeneratorActor, LearnerActor, RewardScorerActor

    layout = resolved_layout(cfg)
    specs = layout_specs(cfg, layout)
    pg = create_placement(specs)
    ns = cfg.cluster.namespace
    opts = [actor_options(s, pg, i, ns) for i, s in enumerate(specs)]
    n_sc = cfg.cluster.num_scorers
    if layout == "fused":  # the one host is the generator and the learner
        host = FusedPolicyActor.options(**opts[0]).remote(cfg, policy_path)
        scorers = [RewardScorerActor.options(**opts[1 + i]).remote(cfg, reward_path) for i in range(n_sc)]
        return StartedRoles([host], scorers, host, pg, specs)
    n_gen = cfg.cluster.num_generators
    gens = [GeneratorActor.options(**opts[i]).remote(cfg, policy_path, i) for i in range(n_gen)]
    scorers = [RewardScorerActor.options(**opts[n_gen + i]).remote(cfg, reward_path) for i in range(n_sc)]
    learner = LearnerActor.options(**opts[n_gen + n_sc]).remote(cfg, policy_path)
    return StartedRoles(gens, scorers, learner, pg, specs)
