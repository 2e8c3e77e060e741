"""`rlhf-ray ppo`: resolve models, attach/start Ray, run the driver."""

from __future__ import annotations

import json
from pathlib import Path

from rlhf_ray import driver
from rlhf_ray.artifacts import ModelRef, share
from rlhf_ray.assets import resolve_model
from rlhf_ray.checkpoint import atomic_write
from rlhf_ray.config import Config
from rlhf_ray.placement import attached, check_fits, role_specs
from rlhf_ray.stages.common import DONE
from rlhf_ray.stages.store import ensure_stage


def reward_model(cfg: Config) -> ModelRef:
    """reward.model if set; else the reward stage's output for this config (trained once, cached),
    as actors get it: by name, or published (no node but this one has the directory)."""
    if cfg.reward.model is not None:
        return share(cfg.reward.model)
    from rlhf_ray.stages import reward

    directory = ensure_stage(cfg, "reward", reward.run)
    return share(str(directory / "model"))


def run(cfg: Config, run_dir: Path, resume: bool = False) -> dict:
    with attached(cfg.cluster):
        check_fits(role_specs(cfg.cluster))  # fail fast, before any model is converted or trained
        policy_path = resolve_model(cfg.model.policy, cfg.cache_dir())  # the driver's copy: its tokenizer
        # No shared disk: assets travel by name, local directories through the object store.
        policy, reward = share(cfg.model.policy), reward_model(cfg)
        summary = driver.train(cfg, run_dir, policy_path, policy, reward, resume)
    atomic_write(run_dir / DONE, json.dumps(summary).encode())
    return summary
