"""The PPO driver: start the roles, then per iteration generate -> score -> learn -> sync.

Rollouts and scores stay in the Ray object store (the driver passes ObjectRefs); the driver only
reads small metric dicts and GenerationInfo records."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import ray
from ray.util.placement_group import remove_placement_group

from rlhf_ray.actors.remote import GeneratorActor, LearnerActor, RewardScorerActor
from rlhf_ray.checkpoint import atomic_write, read_dir, write_checkpoint
from rlhf_ray.config import Config
from rlhf_ray.data import PromptState, PromptStream, load_text_dataset
from rlhf_ray.metrics import MetricsLog, open_sinks, plot_metrics, progress, write_samples
from rlhf_ray.models.policy import load_tokenizer
from rlhf_ray.placement import actor_options, create_placement, role_specs
from rlhf_ray.recovery import Supervisor, timed_get
from rlhf_ray.rundir import resume_checkpoint


class StaleGeneratorError(RuntimeError):
    """A generator sampled with (or confirmed) an adapter other than the learner's latest."""


@dataclass
class Roles:
    generators: list
    scorers: list
    learner: object
    placement_group: object
    # actor name -> () -> a new actor with the same options and placement-group bundle (restarts)
    makers: dict = field(default_factory=dict)

    @staticmethod
    def start(cfg: Config, policy_path: str, reward_path: str, run_dir: Path) -> "Roles":
        specs = role_specs(cfg.cluster)
        pg = create_placement(specs)
        ns = cfg.cluster.namespace
        n_gen, n_sc = cfg.cluster.num_generators, cfg.cluster.num_scorers
        args = [(GeneratorActor, (cfg, policy_path, i)) for i in range(n_gen)]
        args += [(RewardScorerActor, (cfg, reward_path))] * n_sc + [(LearnerActor, (cfg, policy_path))]
        makers = {s.name: partial(make_actor, cls, actor_options(s, pg, i, ns), a) for i, (s, (cls, a)) in enumerate(zip(specs, args))}
        actors: list = []
        try:  # an actor failing in its constructor must not leak the group or the other actors
            for make in makers.values():
                actors.append(make())
            places = ray.get([a.where.remote() for a in actors])  # also waits for every model to load
        except BaseException:
            for actor in actors:
                ray.kill(actor)
            remove_placement_group(pg)
            raise
        roles = Roles(actors[:n_gen], actors[n_gen:n_gen + n_sc], actors[-1], pg, makers)
        layout = [{"actor": s.name, "num_gpus": s.num_gpus, "num_cpus": s.num_cpus, **p} for s, p in zip(specs, places)]
        atomic_write(run_dir / "placement.json", json.dumps(layout, indent=2).encode())
        return roles

    def all(self) -> list:
        return [*self.generators, *self.scorers, self.learner]

    def named(self) -> dict:
        return dict(zip(self.makers, self.all()))

    def restart(self, name: str) -> None:
        """Replace the actor called `name` by a fresh one in its bundle (after a death or a hang)."""
        ray.kill(self.named()[name])
        new = retry_while_name_taken(self.makers[name])
        ray.get(new.where.remote())  # the constructor finished: the model is loaded
        k, n_gen, n_sc = list(self.makers).index(name), len(self.generators), len(self.scorers)
        if k < n_gen:
            self.generators[k] = new
        elif k < n_gen + n_sc:
            self.scorers[k - n_gen] = new
        else:
            self.learner = new

    def sync(self, timeout_s: float) -> None:
        sync_current(self, timeout_s)

    def stop(self) -> None:
        for actor in self.all():
            ray.kill(actor)
        remove_placement_group(self.placement_group)


def make_actor(cls, options: dict, args: tuple):
    return cls.options(**options).remote(*args)


def retry_while_name_taken(make, wait_s: float = 30.0):
    """A killed named actor frees its name asynchronously; its successor takes the same name."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return make()
        except ValueError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def sync_adapter(roles: Roles, payload_ref, version: int, sha256: str, timeout_s: float) -> None:
    """Push an adapter (by ref) to every generator; each must confirm the version and content hash."""
    for got_version, got_sha in timed_get([g.load_adapter.remote(payload_ref) for g in roles.generators], timeout_s):
        if (got_version, got_sha) != (version, sha256):
            raise StaleGeneratorError(f"generator confirmed adapter v{got_version} {got_sha[:12]}, expected v{version} {sha256[:12]}")


def sync_current(roles: Roles, timeout_s: float) -> None:
    payload_ref, receipt_ref = roles.learner.publish.options(num_returns=2).remote()
    receipt = timed_get(receipt_ref, timeout_s)
    sync_adapter(roles, payload_ref, receipt["version"], receipt["sha256"], timeout_s)


def run_iteration(cfg: Config, roles: Roles, prompts: list[str], iteration: int, want_samples: bool) -> tuple[dict, dict | None]:
    timeout = cfg.cluster.call_timeout_s  # every wait is bounded: a hung actor is restarted, not waited on
    t0 = time.perf_counter()
    # 1. generate: one prompt shard per generator; rollouts stay in the object store
    shards = [prompts[i :: len(roles.generators)] for i in range(len(roles.generators))]
    outs = [g.generate.options(num_returns=2).remote(shard, iteration, want_samples)
            for g, shard in zip(roles.generators, shards)]
    rollout_refs = [r for r, _ in outs]
    infos = timed_get([info for _, info in outs], timeout)
    version = infos[0].policy_version
    if any(info.policy_version != version for info in infos):
        raise StaleGeneratorError(f"generators sampled with different adapters: {[i.policy_version for i in infos]}")
    t1 = time.perf_counter()
    # 2. score each shard where it lies (scores are B floats: reading them surfaces a bad reward model here)
    score_refs = [roles.scorers[i % len(roles.scorers)].score.remote(ref) for i, ref in enumerate(rollout_refs)]
    scores = [float(x) for t in timed_get(score_refs, timeout) for x in t]
    t2 = time.perf_counter()
    # 3. learn: experience + PPO epochs; the new adapter comes back as a ref
    metrics_ref, payload_ref = roles.learner.learn.options(num_returns=2).remote(rollout_refs, score_refs, iteration)
    metrics = timed_get(metrics_ref, timeout)
    t3 = time.perf_counter()
    # 4. sync the new adapter to every generator (LoRA tensors only) and confirm it
    sync_adapter(roles, payload_ref, metrics["policy/version"], metrics.pop("policy/adapter_sha256"), timeout)
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
    ckpt = resume_checkpoint(run_dir, cfg) if resume else None
    roles = Roles.start(cfg, policy_path, reward_path, run_dir)
    try:
        start = 1
        if ckpt is not None:
            files = read_dir(ckpt)
            timed_get(roles.learner.restore.remote(files), cfg.cluster.call_timeout_s)
            driver_state = json.loads(files["driver_state.json"])
            stream.state = PromptState(**driver_state["prompts"])
            start = driver_state["iteration"] + 1
        roles.sync(cfg.cluster.call_timeout_s)
        supervisor = Supervisor(cfg, roles, run_dir)  # restarts failed roles, redoes their iteration
        supervisor.commit(start - 1, driver_state_of(cfg, start - 1, stream))
        log = MetricsLog(run_dir / "metrics.jsonl", keep_through=start - 1 if ckpt else None, sinks=open_sinks(cfg, run_dir))
        bar = progress(range(start, cfg.ppo.iterations + 1), desc="ppo", initial=start - 1, total=cfg.ppo.iterations)
        metrics: dict = {}
        for iteration in bar:
            prompts = stream.next(cfg.ppo.batch_size)
            want = iteration % cfg.ppo.samples_every == 0 or iteration == cfg.ppo.iterations
            result = supervisor.run(iteration, lambda: run_iteration(cfg, roles, prompts, iteration, want),
                                    driver_state_of(cfg, iteration, stream))
            if result is not None:  # None: a non-finite batch was skipped (see events.jsonl)
                metrics, samples = result
                log.write({**metrics, "time/snapshot_s": supervisor.snapshot_s})
                bar.set_postfix(reward=f"{metrics['reward/mean']:.3f}", kl=f"{metrics['kl/mean']:.3f}")
                if samples is not None:
                    write_samples(run_dir, iteration, **samples)
            if iteration % cfg.ppo.checkpoint_every == 0 or iteration == cfg.ppo.iterations:
                write_checkpoint(run_dir, iteration, supervisor.state, keep=cfg.ppo.keep_checkpoints)
        log.close()
    finally:
        roles.stop()
    if (run_dir / "metrics.jsonl").exists():
        plot_metrics(run_dir / "metrics.jsonl", run_dir / "metrics.png")
    return {"iterations": cfg.ppo.iterations, "final": {k: metrics.get(k) for k in ("reward/mean", "kl/mean", "policy/version")}}


def driver_state_of(cfg: Config, iteration: int, stream: PromptStream) -> dict:
    return {"iteration": iteration, "prompts": asdict(stream.state), "seed": cfg.run.seed}
