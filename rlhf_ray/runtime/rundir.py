"""Run-directory rules, checked before Ray or any actor starts.

- A fresh run never writes into a directory that already holds a run, unless --overwrite (which
  removes that run's files first, so an old checkpoints/LATEST can never be resumed by mistake).
  --overwrite deletes only what runs write (RUN_OUTPUTS), never follows a symlink out of the
  directory, and is refused when the config reads an input from inside the directory.
- --resume needs a restorable checkpoint and a config equal to the saved one, apart from the
  keys in MUTABLE_KEYS (how long to run and how to run it, never what is computed).
- One process writes a run directory at a time: RUN_DIR/.lock is held for the whole run. A
  directory that holds (or held) a run is locked before anything in it is read (`lock_first`: its
  config, checkpoints, metrics), so a second writer is refused in one line naming the holder
  whatever the live run is doing, never by a traceback over a checkpoint pruned under it; a new
  directory is locked by `claim` once the run's checks passed (a refused run creates nothing)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import yaml

from rlhf_ray.config.parse import flatten
from rlhf_ray.config.schema import Config
from rlhf_ray.errors import UserError
from rlhf_ray.store.checkpoint import check_restorable, latest_checkpoint
from rlhf_ray.store.locks import FileLock, LockHeld

LOCK = ".lock"

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
    "MANIFEST.json",
    ".content.json",
    "ppo",  # the pipeline's PPO stage (cleared by the same rules, see clear)
)
# Keys that name where things are written or cached, not inputs a run reads.
NOT_INPUTS = frozenset({"run.cache_dir"})

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
        check_inputs_outside(run_dir, cfg)
    elif strict and holds_run(run_dir):
        _refuse_existing(run_dir)


def _refuse_existing(run_dir: Path) -> None:
    raise UserError(
        f"{run_dir} already holds a run: continue it with --resume {run_dir}, "
        "pass --overwrite to replace it, or choose another --run-dir"
    )


def take(run_dir: Path) -> FileLock:
    """RUN_DIR/.lock for this process, or a UserError naming the process that holds it."""
    lock = FileLock(run_dir / LOCK)
    try:
        return lock.acquire()
    except LockHeld as held:
        raise UserError(
            f"{run_dir} is in use by another rlhf-ray process (pid {held.holder.get('pid', '?')} on "
            f"{held.holder.get('host', '?')}): wait for it to end or stop it, or choose another --run-dir"
        ) from None


def lock_first(run_dir: Path, *, resume: bool) -> FileLock | None:
    """Lock `run_dir` before anything in it is read, when it holds (or held) a run or is to be resumed;
    None for a directory with nothing of a run in it (or none yet): `claim` locks it once made."""
    if run_dir.is_dir() and (resume or holds_run(run_dir) or (run_dir / LOCK).exists()):
        return take(run_dir)
    return None


def claim(
    run_dir: Path, *, resume: bool, overwrite: bool, strict: bool = True, held: FileLock | None = None
) -> FileLock:
    """Make the run directory and lock it for this process (call after `prepare` and the stage's
    own checks, so a refused run deletes and creates nothing), or keep the lock `held` that
    `lock_first` took; --overwrite clears it only now, under the lock, so a run still writing there
    is never deleted from under it."""
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = held or take(run_dir)
    try:
        if overwrite:
            clear(run_dir)
        elif strict and not resume and holds_run(run_dir):
            _refuse_existing(run_dir)  # another run finished here since `prepare` looked
    except BaseException:
        if held is None:
            lock.release()
        raise
    return lock


def check_inputs_outside(run_dir: Path, cfg: Config) -> None:
    """--overwrite must not delete what the run is about to read: refuse inputs inside RUN_DIR."""
    root = run_dir.resolve()
    for key, value in flatten(cfg.to_dict()).items():
        if key in NOT_INPUTS or not isinstance(value, str) or not value:
            continue
        path = Path(value).expanduser()
        if not path.exists() and not path.is_symlink():
            continue
        target = path.resolve()
        if target == root or root in target.parents:
            raise UserError(
                f"--overwrite would delete {key}={value}, which lies inside {run_dir}: "
                "move that input out of the run directory or choose another --run-dir"
            )


def clear(run_dir: Path) -> None:
    """Remove the outputs of an earlier run (only files runs write; anything else is left alone).
    A symlink is removed as a link: nothing it points to is touched."""
    for name in RUN_OUTPUTS:
        path = run_dir / name
        if name == "ppo" and path.is_dir() and not path.is_symlink():
            with take(path):  # the pipeline's PPO run (`rlhf-ray ppo --resume RUN_DIR/ppo` may hold it)
                clear(path)  # only its outputs, then the folder if empty
                if not any(p.name != LOCK for p in path.iterdir()):
                    shutil.rmtree(path)
        elif path.is_symlink() or path.is_file():
            path.unlink()
        elif path.is_dir():
            shutil.rmtree(path)  # does not follow links inside the tree: it unlinks them
        elif os.path.lexists(path):
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


def changed_keys(run_dir: Path, cfg: Config) -> list[str]:
    """Keys a continuation of the run in `run_dir` may not change but `cfg` does."""
    saved_path = run_dir / "config.yaml"
    if not saved_path.is_file():
        return []
    return [k for k in config_changes(yaml.safe_load(saved_path.read_text()) or {}, cfg) if k not in MUTABLE_KEYS]


def check_config_unchanged(run_dir: Path, cfg: Config) -> None:
    if changed := changed_keys(run_dir, cfg):
        raise UserError(
            f"--resume {run_dir}: the config differs from the run's saved config in {', '.join(changed)} "
            "(only run length, logging and cluster keys may change; start a new run for the rest)"
        )
