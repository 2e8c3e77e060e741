"""Content-addressed stage outputs: a stage's output directory is named by a hash of the config
it depends on, so the pipeline (and PPO's on-demand reward model) skip work already done."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import sys
from pathlib import Path
from typing import Callable

from rlhf_ray.config.load import save_config
from rlhf_ray.config.schema import Config
from rlhf_ray.runtime.rundir import clear
from rlhf_ray.stages.common import is_done
from rlhf_ray.store.artifacts import CONTENT, entry_problem, reusable, stamp
from rlhf_ray.store.locks import entry_lock
from rlhf_ray.store.provenance import collect, write_run_info

log = logging.getLogger(__name__)

# Keys of the reward section that only affect scoring, not the trained reward model.
_SCORING_ONLY = {"model", "score", "input", "batch_size", "max_length", "sources"}
# Reward keys added after entries were cached, with the value that means "unset".
_LATER_KEYS = {"train_window": None, "train_layers": None, "ngram_ensemble": False}


def stage_inputs(cfg: Config, stage: str, upstream: dict[str, str] | None = None) -> dict:
    """The resolved config a stage's output depends on (and the outputs of stages it consumes)."""
    d = cfg.to_dict()
    if stage == "sft":
        return {"seed": d["run"]["seed"], "model": d["model"], "sft": d["sft"]}
    if stage == "merge":
        return {"policy": d["model"]["policy"], "merge": {**d["merge"], **(upstream or {})}}
    if stage == "reward":
        # Per-objective defaults filled in: a key left unset and the same value set explicitly share an entry.
        reward = {k: v for k, v in dataclasses.asdict(cfg.reward.resolved()).items() if k not in _SCORING_ONLY}
        if reward["objective"] == "classifier":
            del reward["objective"]  # classifier entries cached before reward.objective existed keep their key
        for key, unset in _LATER_KEYS.items():  # unset: entries cached before the keys existed keep theirs
            if reward[key] == unset:
                del reward[key]
        return {"seed": d["run"]["seed"], "reward": reward}
    raise ValueError(f"stage {stage!r} is not content-addressed")


def stage_dir(cfg: Config, stage: str, upstream: dict[str, str] | None = None) -> Path:
    blob = json.dumps(stage_inputs(cfg, stage, upstream), sort_keys=True).encode()
    return cfg.cache_dir() / "stages" / f"{stage}-{hashlib.sha256(blob).hexdigest()[:16]}"


def ensure_stage(
    cfg: Config, stage: str, run: Callable[[Config, Path], dict], upstream: dict[str, str] | None = None
) -> Path:
    """Run `stage` into its content-addressed directory unless a finished output is already there.
    One writer per entry (a second pipeline with the same config waits, then reuses); a finished
    entry whose files no longer match their recorded sha256 is cleared and run again, with a warning."""
    directory = stage_dir(cfg, stage, upstream)
    if is_done(directory) and (directory / CONTENT).is_file() and entry_problem(directory) is None:
        log.info("stage %s: reusing %s", stage, directory)
        return directory
    with entry_lock(directory):
        if is_done(directory):
            if not (directory / CONTENT).is_file():  # finished before outputs carried their content
                stamp(directory)
            if reusable(directory):
                log.info("stage %s: reusing %s", stage, directory)
                return directory
            clear(directory)  # corrupted: run again from scratch
        log.info("stage %s: running into %s", stage, directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_config(cfg, directory / "config.yaml")
        write_run_info(directory, collect(sys.argv[1:]))  # which machine and versions made this cached output
        run(cfg, directory)
        stamp(directory)
    return directory
