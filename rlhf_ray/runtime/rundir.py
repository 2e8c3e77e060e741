"""Run-directory rules, checked before Ray or any actor starts.

- A fresh run never writes into a directory that already holds a run, unless --overwrite (which
  removes that run's files first, so an old checkpoints/LATEST can never be resumed by mistake).
- --resume needs a restorable checkpoint and a config equal to the saved one, apart from the
  keys in MUTABLE_KEYS (how long to run and how to run it, never what is computed)."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from rlhf_ray.config.parse import flatten
from rlhf_ray.config.schema import Config
from rlhf_ray.errors import UserError
from rlhf_ray.store.checkpoint import check_restorable, latest_checkpoint

# Files and folders a run writes; their presence means "this directory holds a run".
RUN_OUTPUTS = (
    "config.yaml",
    "checkpoints",
    "metrics.jsonl",
    "events.jsonl",
    "samples",
    "placement.json",
    "metrics.png",
    "metrics.json",
    "DONE.json",
    "pipeline.json",
    "adapter",
    "model",
    "run_info.json",
    "console.log",
    "tensorboard",
    "eval.json",
    "eval_responses.parquet",
    "report.md",
    "plan.json",
    "bench.json",
    "bench.txt",
)

# Keys a resumed run may change: run length and cadence, logging, where models are cached, and
# where/how actors run. Anything else would make the resumed run a different experiment.
MUTABLE_KEYS = frozenset(
    {
        "ppo.iterations",
        "ppo.checkpoint_every",
        "ppo.samples_every",
        "ppo.keep_checkpoints",
        "ppo.on_nonfinite",
        "run.log_level",
        "run.cache_dir",
        "logging.tensorboard",
        "logging.wandb_project",
        "logging.mlflow_experiment",
        "eval.num_prompts",
        "eval.batch_size",
        "cluster.layout",
        "cluster.address",
        "cluster.namespace",
        "cluster.dashboard",
        "cluster.call_timeout_s",
        "cluster.max_role_restarts",
        "cluster.actor_cpus",
        "cluster.torch_threads",
        "cluster.generator_gpus",
        "cluster.scorer_gpus",
        "cluster.learner_gpus",
    }
)


def holds_run(path: Path) -> bool:
    return path.is_dir() and any((path / name).exists() for name in RUN_OUTPUTS)


def prepare(run_dir: Path, cfg: Config, *, resume: bool, overwrite: bool, strict: bool = True) -> None:
    """Apply the rules for `run_dir`; `strict=False` (pipeline: a re-run continues) skips the
    fresh-run refusal. Raises UserError (one line) when a rule is broken."""
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"run directory {run_dir} is a file: pass a directory path")
    if resume:
        if overwrite:
            raise UserError("--resume continues a run and --overwrite replaces it: pass one of them")
        if not run_dir.is_dir():
            raise UserError(f"--resume {run_dir}: no such run directory")
        check_config_unchanged(run_dir, cfg)
        resume_checkpoint(run_dir, cfg)
        return
    if overwrite:
        clear(run_dir)
    elif strict and holds_run(run_dir):
        raise UserError(
            f"{run_dir} already holds a run: continue it with --resume {run_dir}, "
            "pass --overwrite to replace it, or choose another --run-dir"
        )


def clear(run_dir: Path) -> None:
    """Remove the outputs of an earlier run (only files runs write; anything else is left alone)."""
    for name in RUN_OUTPUTS:
        path = run_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def resume_checkpoint(run_dir: Path, cfg: Config) -> Path:
    """The newest intact checkpoint, checked to hold everything this config's learner restores."""
    ckpt = latest_checkpoint(run_dir)
    if ckpt is None:
        raise UserError(
            f"--resume {run_dir}: no checkpoint to resume from (none written yet, or none intact; "
            "checkpoints are written every ppo.checkpoint_every iterations)"
        )
    check_restorable(ckpt, critic=cfg.algo.advantage == "gae")
    return ckpt


def config_changes(saved: dict, new: Config) -> list[str]:
    """Dotted keys whose value differs from the saved config (keys the saved file predates count
    as their defaults)."""
    old = {**flatten(Config().to_dict()), **flatten(saved)}
    return sorted(k for k, v in flatten(new.to_dict()).items() if old.get(k) != v)


def check_config_unchanged(run_dir: Path, cfg: Config) -> None:
    saved_path = run_dir / "config.yaml"
    if not saved_path.is_file():
        return
    changed = [k for k in config_changes(yaml.safe_load(saved_path.read_text()) or {}, cfg) if k not in MUTABLE_KEYS]
    if changed:
        raise UserError(
            f"--resume {run_dir}: the config differs from the run's saved config in {', '.join(changed)} "
            "(only run length, logging and cluster keys may change; start a new run for the rest)"
        )
