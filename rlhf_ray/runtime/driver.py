"""The PPO driver: start the roles, then per iteration generate -> score -> learn -> sync.

Rollouts and scores stay in the Ray object store (the driver passes ObjectRefs); the driver only
reads small metric dicts and GenerationInfo records."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

from rlhf_ray.config.schema import Config
from rlhf_ray.data.prompts import PromptState, prompt_stream
from rlhf_ray.models.policy import load_tokenizer
from rlhf_ray.runtime import stopping
from rlhf_ray.runtime.metrics import (
    MetricsLog,
    open_sinks,
    plot_metrics,
    progress,
    reward_metrics,
    sample_scores,
    write_samples,
)
from rlhf_ray.runtime.overlap import RolloutSource
from rlhf_ray.runtime.recovery import Supervisor, timed_get
from rlhf_ray.runtime.roles import Roles, sync_adapter
from rlhf_ray.runtime.rundir import resume_checkpoint
from rlhf_ray.store.artifacts import ModelRef
from rlhf_ray.store.checkpoint import read_dir, write_checkpoint


def run_iteration(
    cfg: Config, roles: Roles, source: RolloutSource, iteration: int
) -> tuple[dict, dict | None, list[dict]]:
    """-> (metrics, samples to save or None, events: episodes the environment failed, for events.jsonl)"""
    timeout = cfg.cluster.call_timeout_s  # every wait is bounded: a hung actor is restarted, not waited on
    t0 = time.perf_counter()
    # 1. generate: one prompt shard per generator, rollouts stay in the object store (with ppo.overlap
    #    this batch was launched during the previous iteration, and the next one starts now)
    batch = source.take(iteration)
    rollout_refs, infos = batch.rollout_refs, batch.infos
    version = infos[0].policy_version
    t1 = time.perf_counter()
    # 2. score each shard where it lies (Scores are small: reading them surfaces a failing reward source here)
    score_refs = [roles.scorers[i % len(roles.scorers)].score.remote(ref) for i, ref in enumerate(rollout_refs)]
    scores = timed_get(score_refs, timeout)
    t2 = time.perf_counter()
    # 3. learn: experience + PPO epochs; the new adapter comes back as a ref
    metrics_ref, payload_ref = roles.learner.learn(rollout_refs, score_refs, iteration)
    metrics = timed_get(metrics_ref, timeout)
    t3 = time.perf_counter()
    # 4. sync the new adapter to every generator (LoRA tensors only) and confirm it; a batch sampled
    #    ahead finishes first, so its wait counts as generation
    ahead_s = source.settle()
    sync_adapter(roles, payload_ref, metrics["policy/version"], metrics.pop("policy/adapter_sha256"), timeout)
    t4 = time.perf_counter()
    metrics.update(
        {
            "iteration": iteration,
            "policy/sampled_version": version,
            "time/generate_s": t1 - t0 + ahead_s,
            "time/score_s": t2 - t1,
            "time/learn_s": t3 - t2,
            "time/sync_s": t4 - t3 - ahead_s,
            "time/iteration_s": t4 - t0,
            **reward_metrics(scores),  # over the samples a reward source applied to, and per source
        }
    )
    samples = None
    if source.want_samples(iteration):
        combined, per_source = sample_scores(scores)
        samples = {
            "prompts": [p for i in infos for p in i.prompts],
            "responses": [r for i in infos for r in i.responses],
            "scores": combined,
            "sources": per_source,
        }
    events = [{"event": "episode_failed", "iteration": iteration, **e} for i in infos for e in i.env_errors]
    return metrics, samples, events


def train(
    cfg: Config, run_dir: Path, policy_path: str, policy: ModelRef, reward: ModelRef, resume: bool, env=None
) -> dict:
    """policy_path: the driver's own copy (its tokenizer cuts prompts); policy/reward: what actors load;
    env: the run's EnvSpec (multi-turn episodes), None for single-turn.
    On a stop signal the last completed iteration is checkpointed before the roles are released."""
    stopping.reclaim()  # ray.init (attached by the caller) replaced our SIGTERM handler
    tokenizer = load_tokenizer(policy_path)
    stream = prompt_stream(cfg, tokenizer, "train")  # Prompt items: rendered text, raw prompt, the row's columns
    ckpt = resume_checkpoint(run_dir, cfg) if resume else None
    roles = Roles.start(cfg, policy, reward, run_dir, env)
    supervisor: Supervisor | None = None
    log: MetricsLog | None = None
    try:
        start = 1 if ckpt is None else restore_run(cfg, roles, stream, ckpt)
        roles.sync(cfg.cluster.call_timeout_s)
        source = RolloutSource(roles.generators, stream, cfg, last_iteration=cfg.ppo.iterations)
        supervisor = Supervisor(cfg, roles, run_dir)  # restarts failed roles, redoes their iteration
        supervisor.commit(start - 1, driver_state_of(cfg, start - 1, source))
        log = MetricsLog(
            run_dir / "metrics.jsonl", keep_through=start - 1 if ckpt else None, sinks=open_sinks(cfg, run_dir)
        )
        metrics = _loop(cfg, run_dir, roles, source, supervisor, log, start)
    except KeyboardInterrupt as stop:  # StopRequested, or a Ctrl-C that reached us as a plain KeyboardInterrupt
        if supervisor is not None:  # the iterations done since the last periodic checkpoint are kept
            stop.iteration, path = supervisor.save_latest()
            stop.checkpoint = str(path) if path else None
        raise
    finally:
        if log is not None:
            log.close()  # W&B/MLflow runs are ended on errors and stops too
        roles.stop()
    if (run_dir / "metrics.jsonl").exists():
        plot_metrics(run_dir / "metrics.jsonl", run_dir / "metrics.png")
    return {
        "iterations": cfg.ppo.iterations,
        "final": {k: metrics.get(k) for k in ("reward/mean", "kl/mean", "policy/version")},
    }


def _loop(cfg: Config, run_dir: Path, roles: Roles, source, supervisor: Supervisor, log: MetricsLog, start: int):
    """Iterations start..ppo.iterations; returns the last logged metrics."""
    bar = progress(range(start, cfg.ppo.iterations + 1), desc="ppo", initial=start - 1, total=cfg.ppo.iterations)
    last: dict = {}

    def record(result: tuple[dict, dict | None, list[dict]]) -> None:
        metrics, samples, events = result
        for event in events:
            supervisor.events.write(**event)
        log.write({**metrics, "time/snapshot_s": supervisor.snapshot_s})
        bar.set_postfix(reward=f"{metrics['reward/mean']:.3f}", kl=f"{metrics['kl/mean']:.3f}")
        if samples is not None:
            write_samples(run_dir, metrics["iteration"], **samples)
        last.clear()
        last.update(metrics)

    for iteration in bar:
        supervisor.run(  # None: a non-finite batch was skipped (see events.jsonl); record is not called
            iteration,
            lambda: run_iteration(cfg, roles, source, iteration),
            lambda: driver_state_of(cfg, iteration, source),
            record,
        )
        if iteration % cfg.ppo.checkpoint_every == 0 or iteration == cfg.ppo.iterations:
            write_checkpoint(run_dir, iteration, supervisor.state, keep=cfg.ppo.keep_checkpoints)
    return last


def restore_run(cfg: Config, roles, stream, ckpt: Path) -> int:
    """A checkpoint back into the learner and the prompt stream; -> the first iteration still to run."""
    files = read_dir(ckpt)
    # part of starting: loading the optimizer state can take as long as loading the model
    timed_get(roles.learner.restore(files), cfg.cluster.start_timeout_s)
    driver_state = json.loads(files["driver_state.json"])
    stream.state = PromptState(**driver_state["prompts"])
    return driver_state["iteration"] + 1


def driver_state_of(cfg: Config, iteration: int, source: RolloutSource) -> dict:
    """What a resumed driver needs: the prompt position from before any batch sampled ahead."""
    return {"iteration": iteration, "prompts": asdict(source.prompt_state()), "seed": cfg.run.seed}
