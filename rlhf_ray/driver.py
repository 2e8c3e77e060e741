"""The PPO driver: start the roles, then per iteration generate -> score -> learn -> sync.

Rollouts and scores stay in the Ray object store (the driver passes ObjectRefs); the driver only
reads small metric dicts and GenerationInfo records."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import ray
from ray.util.placement_group import remove_placement_group
from tqdm import tqdm

from rlhf_ray.checkpoint import atomic_write, latest_checkpoint, read_dir, read_json, write_checkpoint
from rlhf_ray.config import Config
from rlhf_ray.data import PromptState, PromptStream, load_text_dataset
from rlhf_ray.errors import UserError
from rlhf_ray.layout import start_roles
from rlhf_ray.metrics import MetricsLog, plot_metrics, write_samples
from rlhf_ray.models.policy import load_tokenizer


class StaleGeneratorError(RuntimeError):
    """A generator sampled with (or confirmed) an adapter other than the learner's latest."""


@dataclass
class Roles:
    generators: list
    scorers: list
    learner: object
    placement_group: object

    @staticmethod
    def start(cfg: Config, policy_path: str, reward_path: str, run_dir: Path) -> "Roles":
        started = start_roles(cfg, policy_path, reward_path)  # separate actors or one fused policy host
        roles = Roles(started.generators, started.scorers, started.learner, started.placement_group)
        places = ray.get([a.where.remote() for a in roles.all()])  # also waits for every model to load
        layout = [{"actor": s.name, "num_gpus": s.num_gpus, "num_cpus": s.num_cpus, **p} for s, p in zip(started.specs, places)]
        atomic_write(run_dir / "placement.json", json.dumps(layout, indent=2).encode())
        return roles

    def all(self) -> list:
        """Each actor once (in the fused layout the learner is also the generator)."""
        return list(dict.fromkeys([*self.generators, *self.scorers, self.learner]))

    def stop(self) -> None:
        for actor in self.all():
            ray.kill(actor)
        remove_placement_group(self.placement_group)


def sync_adapter(roles: Roles, payload_ref, version: int, sha256: str) -> None:
    """Push an adapter (by ref) to every generator; each must confirm the version and content hash."""
    for got_version, got_sha in ray.get([g.load_adapter.remote(payload_ref) for g in roles.generators]):
        if (got_version, got_sha) != (version, sha256):
            raise StaleGeneratorError(f"generator confirmed adapter v{got_version} {got_sha[:12]}, expected v{version} {sha256[:12]}")


def sync_current(roles: Roles) -> None:
    payload_ref, receipt_ref = roles.learner.publish.options(num_returns=2).remote()
    receipt = ray.get(receipt_ref)
    sync_adapter(roles, payload_ref, receipt["version"], receipt["sha256"])


def run_iteration(cfg: Config, roles: Roles, prompts: list[str], iteration: int, want_samples: bool) -> tuple[dict, dict | None]:
    t0 = time.perf_counter()
    # 1. generate: one prompt shard per generator; rollouts stay in the object store
    shards = [prompts[i :: len(roles.generators)] for i in range(len(roles.generators))]
    outs = [g.generate.options(num_returns=2).remote(shard, iteration, want_samples)
            for g, shard in zip(roles.generators, shards)]
    rollout_refs = [r for r, _ in outs]
    infos = ray.get([info for _, info in outs])
    version = infos[0].policy_version
    if any(info.policy_version != version for info in infos):
        raise StaleGeneratorError(f"generators sampled with different adapters: {[i.policy_version for i in infos]}")
    t1 = time.perf_counter()
    # 2. score each shard where it lies (scores are B floats: reading them surfaces a bad reward model here)
    score_refs = [roles.scorers[i % len(roles.scorers)].score.remote(ref) for i, ref in enumerate(rollout_refs)]
    scores = [float(x) for t in ray.get(score_refs) for x in t]
    t2 = time.perf_counter()
    # 3. learn: experience + PPO epochs; the new adapter comes back as a ref
    metrics_ref, payload_ref = roles.learner.learn.options(num_returns=2).remote(rollout_refs, score_refs, iteration)
    metrics = ray.get(metrics_ref)
    t3 = time.perf_counter()
    # 4. sync the new adapter to every generator (LoRA tensors only) and confirm it
    sync_adapter(roles, payload_ref, metrics["policy/version"], metrics.pop("policy/adapter_sha256"))
    t4 = time.perf_counter()
    metrics.update({"iteration": iteration, "policy/sampled_version": version, "time/generate_s": t1 - t0,
                    "time/score_s": t2 - t1, "time/learn_s": t3 - t2, "time/sync_s": t4 - t3, "time/iteration_s": t4 - t0})
    samples = None
    if want_samples:
        samples = {"prompts": [p for i in infos for p in i.prompts], "responses": [r for i in infos for r in i.responses],
                   "scores": scores}
    return metrics, samples


def train(cfg: Config, run_dir: Path, policy_path: str, reward_path: str, resume: bool) -> dict:
    tokenizer = load_tokenizer(policy_path)
    texts = load_text_dataset(cfg.data.dataset, "train", cfg.data.text_field)["text"].to_pylist()
    stream = PromptStream(texts, tokenizer, cfg.data.prompt_min_tokens, cfg.data.prompt_max_tokens, cfg.run.seed)
    start = 1
    ckpt = latest_checkpoint(run_dir) if resume else None
    if resume and ckpt is None:
        raise UserError(f"--resume {run_dir}: no checkpoint found (checkpoints are written every ppo.checkpoint_every iterations)")
    roles = Roles.start(cfg, policy_path, reward_path, run_dir)
    try:
        if ckpt is not None:
            ray.get(roles.learner.restore.remote(read_dir(ckpt)))
            driver_state = read_json(ckpt / "driver_state.json")
            stream.state = PromptState(**driver_state["prompts"])
            start = driver_state["iteration"] + 1
        sync_current(roles)
        log = MetricsLog(run_dir / "metrics.jsonl", keep_through=start - 1 if ckpt else None)
        bar = tqdm(range(start, cfg.ppo.iterations + 1), desc="ppo", unit="it", initial=start - 1, total=cfg.ppo.iterations)
        metrics: dict = {}
        for iteration in bar:
            prompts = stream.next(cfg.ppo.batch_size)
            want = iteration % cfg.ppo.samples_every == 0 or iteration == cfg.ppo.iterations
            metrics, samples = run_iteration(cfg, roles, prompts, iteration, want)
            log.write(metrics)
            bar.set_postfix(reward=f"{metrics['reward/mean']:.3f}", kl=f"{metrics['kl/mean']:.3f}")
            if samples is not None:
                write_samples(run_dir, iteration, **samples)
            if iteration % cfg.ppo.checkpoint_every == 0 or iteration == cfg.ppo.iterations:
                files = ray.get(roles.learner.checkpoint.remote())
                state = {"iteration": iteration, "prompts": asdict(stream.state), "seed": cfg.run.seed}
                files["driver_state.json"] = json.dumps(state).encode()
                write_checkpoint(run_dir, iteration, files)
    finally:
        roles.stop()
    plot_metrics(run_dir / "metrics.jsonl", run_dir / "metrics.png")
    return {"iterations": cfg.ppo.iterations, "final": {k: metrics.get(k) for k in ("reward/mean", "kl/mean", "policy/version")}}
