"""`rlhf-ray pipeline`: sft -> merge -> reward -> ppo, the whole recipe.

sft, merge and reward write content-addressed outputs (named by a hash of the config they depend
on) and are skipped when a finished output exists; ppo runs in RUN_DIR/ppo and resumes from its
latest checkpoint, so re-running an interrupted pipeline picks up where it stopped."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

from rlhf_ray.config.load import save_config
from rlhf_ray.config.schema import Config
from rlhf_ray.errors import UserError
from rlhf_ray.runtime import rundir
from rlhf_ray.runtime.rundir import changed_keys
from rlhf_ray.stages import merge, ppo, reward, sft
from rlhf_ray.stages.common import DONE, is_done
from rlhf_ray.stages.store import ensure_stage
from rlhf_ray.store.checkpoint import atomic_write, latest_checkpoint, read_json

log = logging.getLogger(__name__)


def _with(cfg: Config, section: str, **changes) -> Config:
    return dataclasses.replace(cfg, **{section: dataclasses.replace(getattr(cfg, section), **changes)})


def check(cfg: Config) -> None:
    """Up front, before Ray: the reward stage's pair set (the other stages' inputs may not exist yet)."""
    if "reward" in cfg.pipeline.stages:
        reward.check(cfg)


def run(cfg: Config, run_dir: Path, resume: bool = False) -> dict:
    stages = cfg.pipeline.stages
    outputs: dict[str, str] = {}
    if "sft" in stages:
        outputs["sft"] = str(ensure_stage(cfg, "sft", sft.run))
    if "merge" in stages:
        adapter = cfg.merge.adapter or (str(Path(outputs["sft"]) / "adapter") if "sft" in outputs else None)
        if adapter is None:
            raise UserError(
                "pipeline stage merge needs an adapter: include sft in pipeline.stages or set merge.adapter"
            )
        merge_dir = ensure_stage(_with(cfg, "merge", adapter=adapter), "merge", merge.run)
        outputs["merge"] = str(merge_dir)
        cfg = _with(cfg, "model", policy=str(merge_dir / "model"))  # PPO starts from the merged model
    if "reward" in stages:
        outputs["reward"] = str(ensure_stage(cfg, "reward", reward.run))
        cfg = _with(cfg, "reward", model=str(Path(outputs["reward"]) / "model"))
    summary: dict = {}
    if "ppo" in stages:
        summary = _run_ppo(cfg, run_dir / "ppo")
        outputs["ppo"] = str(run_dir / "ppo")
    atomic_write(run_dir / "pipeline.json", json.dumps(outputs, indent=2).encode())
    return {"stages": outputs, **summary}


def _run_ppo(cfg: Config, ppo_dir: Path) -> dict:
    """Skip a finished PPO run, resume an interrupted (or extended: more ppo.iterations) one. The
    rules of --resume apply: a PPO stage trained with a different config (its merged base included)
    is never continued; the rerun is refused, naming the keys (--overwrite starts it afresh).
    RUN_DIR/ppo is locked as a run directory of its own first: `rlhf-ray ppo --resume RUN_DIR/ppo`
    and the pipeline never write it at once."""
    ppo_dir.mkdir(parents=True, exist_ok=True)
    with rundir.take(ppo_dir):
        return _continue_ppo(cfg, ppo_dir)


def _continue_ppo(cfg: Config, ppo_dir: Path) -> dict:
    checkpoint = latest_checkpoint(ppo_dir)
    if checkpoint is not None and (changed := changed_keys(ppo_dir, cfg)):
        raise UserError(
            f"pipeline: {ppo_dir} holds a PPO run made with a different config ({', '.join(changed)}): "
            f"pass --overwrite to start PPO afresh, or choose another --run-dir"
        )
    reached = read_json(checkpoint / "driver_state.json")["iteration"] if checkpoint else 0
    if is_done(ppo_dir) and reached >= cfg.ppo.iterations:
        log.info("stage ppo: already finished in %s", ppo_dir)
        return read_json(ppo_dir / DONE)
    save_config(cfg, ppo_dir / "config.yaml")
    return ppo.run(cfg, ppo_dir, resume=checkpoint is not None)
