"""Which processes answer the role calls: one actor per role (`separate`) or one fused policy host
serving both the generator and the learner calls over one base (`fused`). The driver gets the same
handles either way (generators, scorers, learner) and never branches on the layout."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from rlhf_ray.config.schema import Config
from rlhf_ray.runtime.placement import RoleSpec, role_specs


def resolved_layout(cfg: Config) -> str:
    if cfg.cluster.layout != "auto":
        return cfg.cluster.layout
    from rlhf_ray.runtime.plan import make_plan

    return make_plan(cfg).chosen


def planned(cfg: Config, run_dir: Path) -> Config:
    """Run the memory planner (refuses a config that cannot fit), write plan.json, fix the layout."""
    from rlhf_ray.runtime.plan import make_plan
    from rlhf_ray.store.checkpoint import atomic_write

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
