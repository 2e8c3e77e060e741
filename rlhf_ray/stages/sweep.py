"""`rlhf-ray sweep`: many PPO/GRPO runs sharing one quantized base, each with its own adapter.

DIR/sweep.json lists the runs (name, overrides, state: pending | running | done | failed |
stopped, last checkpointed iteration, error); each run writes a normal run directory DIR/<name>/
(config.yaml, plan.json, run_info.json, metrics.jsonl, samples/, checkpoints/, DONE.json), so
`eval`, `report` and `ppo --resume` read one run as any other. `--resume DIR` continues every run
that is not done (a failed one from its last checkpoint, or afresh when it has none)."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

from rlhf_ray.config.load import load_config, save_config
from rlhf_ray.config.schema import Config
from rlhf_ray.config.sweep import check_names, check_sweep, grid_runs, runs_file
from rlhf_ray.envs.runner import env_spec
from rlhf_ray.errors import UserError
from rlhf_ray.models.assets import resolve_model
from rlhf_ray.runtime import rundir
from rlhf_ray.runtime.layout import planned
from rlhf_ray.runtime.placement import attached
from rlhf_ray.runtime.sweep import SweepRun, train_sweep
from rlhf_ray.runtime.sweep_plan import SWEEP, choose_layout, sweep_plan
from rlhf_ray.stages import ppo
from rlhf_ray.stages.common import DONE
from rlhf_ray.store.checkpoint import atomic_write, latest_checkpoint
from rlhf_ray.store.locks import FileLock
from rlhf_ray.store.provenance import collect, model_reference, record_models, write_run_info
from rlhf_ray.store.sweeps import SweepFile, is_sweep, read_sweep


def _layout(cfg: Config) -> Config:
    """A sweep's layout: fused (one base for every run's generation and learning) unless the config
    asks for separate, or for several generators or learners (cluster.num_learners learner hosts and
    cluster.num_generators generator hosts, each one base)."""
    c = cfg.cluster
    layout = "separate" if c.layout == "separate" or max(c.num_generators, c.num_learners) > 1 else "fused"
    return dataclasses.replace(cfg, cluster=dataclasses.replace(cfg.cluster, layout=layout))


def new_runs(config: str | None, overrides: list[str], grids: list[str], runs_path: str | None) -> dict:
    """name -> (its overrides, its config), every check passed (nothing written yet)."""
    load_config(config, overrides)  # the common config first: a bad key is named before anything else
    if bool(grids) == bool(runs_path):
        raise UserError("a sweep needs its runs: pass --grid KEY=[v1,v2] (one or more) or --runs FILE.yaml")
    named = grid_runs(grids) if grids else runs_file(runs_path)
    check_names(list(named))
    configs = {name: load_config(config, [*overrides, *extra]) for name, extra in named.items()}
    check_sweep(configs)
    return {name: (named[name], _layout(cfg)) for name, cfg in configs.items()}


def start(
    sweep_dir: Path,
    config: str | None,
    overrides: list[str],
    grids: list[str],
    runs_path: str | None,
    overwrite: bool,
    argv: list[str],
) -> tuple[list[FileLock], SweepFile, list[SweepRun]]:
    """A fresh sweep: check everything, then make DIR/<name>/ for each run and DIR/sweep.json."""
    if is_sweep(sweep_dir) and not overwrite:
        raise UserError(
            f"{sweep_dir} already holds a sweep: continue it with rlhf-ray sweep --resume {sweep_dir}, "
            "pass --overwrite to replace it, or choose another --run-dir"
        )
    runs = new_runs(config, overrides, grids, runs_path)
    for name, (_, cfg) in runs.items():
        rundir.prepare(sweep_dir / name, cfg, resume=False, overwrite=overwrite)
        ppo.check(cfg)  # reward functions import, models and data exist: before anything is written
    sweep_dir.mkdir(parents=True, exist_ok=True)
    locks = [rundir.take(sweep_dir)]
    try:
        for name, (_, cfg) in runs.items():
            run_dir = sweep_dir / name
            locks.append(rundir.claim(run_dir, resume=False, overwrite=overwrite))
            write_run_info(run_dir, {**collect(argv), "sweep": str(sweep_dir.resolve()), "run": name})
            save_config(cfg, run_dir / "config.yaml")
    except BaseException:
        for lock in locks:
            lock.release()
        raise
    data = {
        "config": config,
        "overrides": overrides,
        "created": time.time(),
        "runs": [{"name": n, "overrides": o, "state": "pending", "iteration": 0} for n, (o, _) in runs.items()],
    }
    sweep = SweepFile(sweep_dir, data)
    sweep.write()
    return locks, sweep, [SweepRun(n, cfg, sweep_dir / n, []) for n, (_, cfg) in runs.items()]


def resume(sweep_dir: Path, overrides: list[str]) -> tuple[list[FileLock], SweepFile, list[SweepRun]]:
    """The runs of DIR/sweep.json that are not done, each from its own config.yaml (plus overrides of
    the keys a resumed run may change) and its latest checkpoint, or afresh when it has none."""
    locks = [rundir.take(sweep_dir)]
    try:
        sweep = SweepFile(sweep_dir, read_sweep(sweep_dir))
        todo = [r for r in sweep.data["runs"] if r["state"] != "done"]
        configs = {r["name"]: _layout(load_config(sweep_dir / r["name"] / "config.yaml", overrides)) for r in todo}
        if configs:
            check_sweep(configs)
        runs = []
        for name, cfg in configs.items():
            run_dir = sweep_dir / name
            locks.append(rundir.take(run_dir))
            has_ckpt = latest_checkpoint(run_dir) is not None
            if has_ckpt:
                rundir.check_config_unchanged(run_dir, cfg)
                rundir.resume_checkpoint(run_dir, cfg)
            else:  # failed or stopped before its first checkpoint: start it again
                rundir.clear(run_dir)
                save_config(cfg, run_dir / "config.yaml")
            ppo.check(cfg)
            (run_dir / DONE).unlink(missing_ok=True)
            runs.append(SweepRun(name, cfg, run_dir, [], resume=has_ckpt))
    except BaseException:
        for lock in locks:
            lock.release()
        raise
    return locks, sweep, runs


def run(sweep_dir: Path, sweep: SweepFile, runs: list[SweepRun]) -> dict:
    """Train every run of `runs` on one base; -> {"runs": {name: state}, "failed": [...]}."""
    if not runs:
        return {"runs": {r["name"]: r["state"] for r in sweep.data["runs"]}, "failed": []}
    first = runs[0].cfg
    plan = sweep_plan([r.cfg for r in runs], choose=False)  # every run on one host: refused here if it cannot fit
    try:
        plan.chosen = choose_layout(plan, SWEEP, 1)
    finally:
        atomic_write(sweep_dir / "plan.json", json.dumps(plan.to_json(), indent=2).encode())
    for r in runs:
        r.cfg = planned(r.cfg, r.run_dir)  # plan.json per run (as a single run); the layout stays the sweep's
    with attached(first.cluster):
        policy_path = resolve_model(first.model.policy, first.cache_dir())
        for r in runs:
            r.reward, records = ppo.reward_sources(r.cfg)
            r.env = env_spec(r.cfg)
            record_models(r.run_dir, {"policy": model_reference(r.cfg.model.policy, policy_path), **records})
        policy = ppo.shared(first, first.model.policy)

        def on_state(name: str | None, state: str, **info) -> None:
            if name is None:  # about the sweep as a whole
                sweep.data[state] = info["mode"]
                sweep.write()
                return
            if state == "done":
                atomic_write(sweep_dir / name / DONE, json.dumps(info["summary"]).encode())
            sweep.set(name, state, **info)

        train_sweep(runs, policy_path, policy, sweep_dir, on_state)
    states = {r["name"]: r["state"] for r in sweep.data["runs"]}
    failed = [f"{r['name']}: {r.get('error')}" for r in sweep.data["runs"] if r["state"] == "failed"]
    return {"runs": states, "failed": failed}
