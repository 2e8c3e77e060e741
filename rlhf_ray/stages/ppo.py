"""`rlhf-ray ppo`: resolve models, attach/start Ray, run the driver."""

from __future__ import annotations

import json
from pathlib import Path

from rlhf_ray.config.schema import Config
from rlhf_ray.models.assets import resolve_model
from rlhf_ray.runtime import driver, preflight
from rlhf_ray.runtime.layout import planned, role_layout
from rlhf_ray.runtime.placement import attached, check_fits
from rlhf_ray.stages.common import DONE
from rlhf_ray.stages.store import ensure_stage
from rlhf_ray.store.artifacts import share
from rlhf_ray.store.checkpoint import atomic_write
from rlhf_ray.store.provenance import model_reference, record_models


def reward_model_path(cfg: Config) -> str:
    """reward.model if set; else the reward stage's output for this config (trained once, cached)."""
    if cfg.reward.model is not None:
        return resolve_model(cfg.reward.model, cfg.cache_dir())
    from rlhf_ray.stages import reward

    directory = ensure_stage(cfg, "reward", reward.run)
    return str(directory / "model")


def check(cfg: Config) -> None:
    """Inputs that can be checked without Ray (run by the CLI before the run directory is made)."""
    preflight.check_ppo(cfg)


def run(cfg: Config, run_dir: Path, resume: bool = False) -> dict:
    (run_dir / DONE).unlink(missing_ok=True)  # an extended run is not complete until it ends
    cfg = planned(cfg, run_dir)  # memory plan first: picks the layout or refuses, before Ray starts
    with attached(cfg.cluster):
        check_fits(role_layout(cfg).bundles)  # fail fast, before any model is converted or trained
        policy_path = resolve_model(cfg.model.policy, cfg.cache_dir())  # the driver's copy: its tokenizer
        reward_path = reward_model_path(cfg)
        record_models(
            run_dir,
            {
                "policy": model_reference(cfg.model.policy, policy_path),
                "reward": model_reference(cfg.reward.model, reward_path),
            },
        )
        # No shared disk: assets travel by name, local directories through the object store.
        policy, reward = share(cfg.model.policy), share(cfg.reward.model or reward_path)
        summary = driver.train(cfg, run_dir, policy_path, policy, reward, resume)
    atomic_write(run_dir / DONE, json.dumps(summary).encode())
    return summary
