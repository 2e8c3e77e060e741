"""`rlhf-ray ppo`: resolve models, attach/start Ray, run the driver."""

from __future__ import annotations

import json
from pathlib import Path

from rlhf_ray.config.schema import Config
from rlhf_ray.envs.runner import env_spec
from rlhf_ray.errors import UserError
from rlhf_ray.models.assets import resolve_model
from rlhf_ray.rewards.sources import SourceSpec, check_sources, source_specs
from rlhf_ray.runtime import driver, preflight
from rlhf_ray.runtime.layout import planned, role_layout
from rlhf_ray.runtime.placement import attached, check_fits
from rlhf_ray.stages import reward
from rlhf_ray.stages.common import DONE, is_done
from rlhf_ray.stages.store import ensure_stage, stage_dir
from rlhf_ray.store.artifacts import ModelRef, share
from rlhf_ray.store.checkpoint import atomic_write
from rlhf_ray.store.provenance import model_reference, record_models


def shared(cfg: Config, ref: str) -> ModelRef:
    """What actors get for a model reference (store.artifacts.share): a local directory is published
    to cluster.storage when it is set, else into the object store."""
    try:
        return share(ref, cfg.cluster.storage)
    except OSError as exc:
        if cfg.cluster.storage is None:
            raise
        raise UserError(
            f"cannot publish {ref} to cluster.storage={cfg.cluster.storage}: {str(exc).splitlines()[0]} "
            "(check the URI, that this machine can write there and its credentials, or unset cluster.storage)"
        ) from None


def reward_model_path(cfg: Config) -> str:
    """reward.model if set; else the reward stage's output for this config (trained once, cached)."""
    if cfg.reward.model is not None:
        return resolve_model(cfg.reward.model, cfg.cache_dir())

    directory = ensure_stage(cfg, "reward", reward.run)
    return str(directory / "model")


def reward_sources(cfg: Config, publish: bool = True, train: bool = True) -> tuple[list[SourceSpec], dict]:
    """What the reward scorers build, and run_info.json's record of each reward model. A classifier or
    model directory is published once into the object store (`publish`; else its local path, for
    scoring in this process); a source of the kind the reward stage trains (classifier, or model
    under reward.objective=pairwise) without a model is reward.model, else the reward stage's output,
    trained here if it is not cached and `train` allows it."""
    models, records = {}, {}
    trained = "model" if cfg.reward.objective == "pairwise" else "classifier"
    for i, src in enumerate(cfg.reward.source_list()):
        if src.kind not in ("classifier", "model"):
            continue
        configured = src.model or (cfg.reward.model if src.kind == trained else None)
        if configured is not None:
            path = resolve_model(configured, cfg.cache_dir())
        elif train or is_done(stage_dir(cfg, "reward")):
            path = reward_model_path(cfg)
        else:
            raise UserError(
                f"the {src.kind} reward source has no model and the reward stage's output is not cached: "
                "set reward.model (or the source's model), or run `rlhf-ray reward` with this config first"
            )
        models[i] = shared(cfg, configured or path) if publish else path
        name = src.resolved_name()
        # The default source (the classifier, or the pairwise model) is recorded as `reward`, as before sources.
        default = name == "classifier" or not cfg.reward.sources
        records["reward" if default else f"reward:{name}"] = model_reference(configured, path)
    return source_specs(cfg, models), records


def check(cfg: Config) -> None:
    """Inputs that can be checked without Ray (run by the CLI before the run directory is made)."""
    check_sources(cfg)  # reward functions import and are callable; reward models have one output
    preflight.check_ppo(cfg)


def run(cfg: Config, run_dir: Path, resume: bool = False) -> dict:
    (run_dir / DONE).unlink(missing_ok=True)  # an extended run is not complete until it ends
    cfg = planned(cfg, run_dir)  # memory plan first: picks the layout or refuses, before Ray starts
    with attached(cfg.cluster):
        check_fits(role_layout(cfg).bundles)  # fail fast, before any model is converted or trained
        policy_path = resolve_model(cfg.model.policy, cfg.cache_dir())  # the driver's copy: its tokenizer
        reward, reward_records = reward_sources(cfg)
        record_models(run_dir, {"policy": model_reference(cfg.model.policy, policy_path), **reward_records})
        # Assets travel by name, local directories through cluster.storage or the object store.
        policy = shared(cfg, cfg.model.policy)
        summary = driver.train(cfg, run_dir, policy_path, policy, reward, resume, env_spec(cfg))
    atomic_write(run_dir / DONE, json.dumps(summary).encode())
    return summary
