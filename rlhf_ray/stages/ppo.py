"""`rlhf-ray ppo`: resolve models, attach/start Ray, run the driver."""

from __future__ import annotations

import json
from pathlib import Path

from rlhf_ray import driver
from rlhf_ray.assets import resolve_model
from rlhf_ray.checkpoint import atomic_write
from rlhf_ray.config import Config
from rlhf_ray.layout import layout_specs, planned
from rlhf_ray.placement import attached, check_fits
from rlhf_ray.stages.common import DONE
from rlhf_ray.stages.store import ensure_stage


def reward_model_path(cfg: Config) -> str:
    """reward.model if set; else the reward stage's output for this config (trained once, cached)."""
    if cfg.reward.model is not None:
        return resolve_model(cfg.reward.model, cfg.cache_dir())
    from rlhf_ray.stages import reward

    directory = ensure_stage(cfg, "reward", reward.run)
    return str(directory / "model")


def run(cfg: Config, run_dir: Path, resume: bool = False) -> dict:
    cfg = planned(cfg, run_dir)  # memory plan first: picks the layout or refuses, before Ray starts
    with attached(cfg.cluster):
        check_fits(layout_specs(cfg))  # fail fast, before any model is converted or trained
        policy_path = resolve_model(cfg.model.policy, cfg.cache_dir())
        reward_path = reward_model_path(cfg)
        summary = driver.train(cfg, run_dir, policy_path, reward_path, resume)
    atomic_write(run_dir / DONE, json.dumps(summary).encode())
    return summary
