"""Many runs, one base: several PPO/GRPO runs of a sweep over ONE quantized base in one process.

The fused host (actors/fused.py) serves one run; this one serves N. The base is loaded once; each
run owns a named peft LoRA adapter (its own rank and targets), its own value head (algo.advantage
gae), its own AdamW optimizer built from its adapter's parameter NAMES (never requires_grad:
peft's `set_adapter` flips trainability), its own KL controller, version and checkpoint. Each run
is the existing Learner and Generator over the shared model (`shared=`, `adapter_name=`), so no
PPO math is repeated here. Every call names its run; the host activates that run's adapter first.
The reference is the base with every adapter disabled, as in a single run. The lean decoder's
packed base is built once and shared by every run (it reads the active adapter at each call);
`generate_many` samples every run's prompts in one call of it, each row under its run's adapter
(models/mixed.py).
Under the separate layout (cluster.layout: separate) the same class plays one role only: `role="learner"`
holds every run's learner and no generator, `role="generator"` (replica `rank`) every run's generator,
each run's adapter imported from the learner's payloads as a single generator imports its own.
Plain class: runs without Ray (tests build it in-process)."""

from __future__ import annotations

import torch

from rlhf_ray.actors.common import init_process, load_policy
from rlhf_ray.actors.dp import join
from rlhf_ray.actors.fused import SharedPolicy, confirm_live, release_memory
from rlhf_ray.actors.generator import Generator, StaleAdapterError
from rlhf_ray.actors.learner import Learner
from rlhf_ray.batch import AdapterPayload, GenerationInfo, Prompt, Rollout
from rlhf_ray.config.schema import Config
from rlhf_ray.envs.runner import EnvSpec
from rlhf_ray.models.adapter import import_adapter
from rlhf_ray.models.assets import materialize
from rlhf_ray.models.decode import LeanDecoder
from rlhf_ray.models.dequant import dequantized_int8
from rlhf_ray.models.mixed import MixedRequest, sample_mixed, sample_mixed_transformers
from rlhf_ray.models.policy import (
    load_tokenizer,
    lora_config,
    ppo_numerics,
    role_device,
    target_modules_for,
    top_layers,
)
from rlhf_ray.store import seeds
from rlhf_ray.store.artifacts import ModelRef

PLACEHOLDER = "default"  # the adapter get_peft_model needs to wrap the base; deleted once the runs' exist


def adapter_names(runs: list[str]) -> dict[str, str]:
    """Run name -> its adapter's name in the model (run names may hold dots, which module keys cannot)."""
    return {run: f"run{i}" for i, run in enumerate(runs)}


ROLES = ("fused", "generator", "learner")


class RunState:
    """One run on the shared base: its learner (adapter, value head, optimizer, KL) and generator
    (either is None on a host of the separate layout that does not play that role)."""

    def __init__(self, adapter: str, learner: Learner | None, generator: Generator | None):
        self.adapter, self.learner, self.generator = adapter, learner, generator


class MultiRunPolicyHost:
    def __init__(
        self,
        runs: dict[str, Config],
        policy: ModelRef,
        envs: dict[str, EnvSpec | None] | None = None,
        role: str = "fused",
        rank: int = 0,
    ):
        """runs: run name -> its config (the sweep checked that none changes the base); envs: each
        run's environments (multi-turn), None for single-turn runs; role: fused (both roles),
        generator (replica `rank`) or learner."""
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, got {role!r}")
        first = next(iter(runs.values()))
        init_process(first)
        policy_path = materialize(policy, first.cache_dir())
        c = first.cluster
        device = role_device(
            {"fused": first.fused_gpus(), "generator": c.generator_gpus, "learner": c.learner_gpus}[role]
        )
        # the one quantized base (+ a placeholder adapter), loaded as the single-run role of this kind loads it
        checkpointing = False if role == "generator" else None
        model = ppo_numerics(load_policy(first, policy_path, device, gradient_checkpointing=checkpointing))
        shared = SharedPolicy(model, load_tokenizer(policy_path), device)
        names = adapter_names(list(runs))
        self.runs: dict[str, RunState] = {}
        for run, cfg in runs.items():
            m = cfg.model
            torch.manual_seed(cfg.run.seed)  # a run's fresh LoRA depends on its seed only, not on its neighbours
            targets = target_modules_for(model, m.target_modules)
            layers = top_layers(model, m.lora_layers)
            model.add_adapter(names[run], lora_config(m.lora_r, m.lora_alpha, m.lora_dropout, targets, layers=layers))
            # its value head next, from the same seeded stream (as a single fused run: LoRA, then head)
            learner = Learner(cfg, policy_path, shared=shared, adapter_name=names[run]) if role != "generator" else None
            generator = None
            if role != "learner":
                generator = Generator(cfg, policy_path, rank=rank, shared=shared, env=(envs or {}).get(run))
            self.runs[run] = RunState(names[run], learner, generator)
        model.set_adapter(names[next(iter(runs))])
        model.delete_adapter(PLACEHOLDER)
        ppo_numerics(model)  # the new adapters' dropout off too, train mode
        self.model, self.lean = model, None

    def _activate(self, run: str) -> RunState:
        state = self.runs[run]
        self.model.set_adapter(state.adapter)
        return state

    def run_names(self) -> list[str]:
        return list(self.runs)

    # ------------------------------------------------------------------ generator role (per run)
    def load_adapter(self, run: str, payload: AdapterPayload) -> tuple[int, str]:
        """Fused: confirm the payload is what the run's adapter holds (no copy; a stale or corrupt one is
        refused). A generator host: import it into the run's adapter after its hash check."""
        state = self.runs[run]
        if state.learner is None:
            digest = import_adapter(self.model, payload, adapter_name=state.adapter)
        else:
            digest = confirm_live(payload, state.learner.adapter(), f"run {run}'s")
        state.generator.version, state.generator.adapter_hash = payload.version, digest
        return payload.version, digest

    def generate(
        self, run: str, prompts: list, iteration: int, with_texts: bool = False
    ) -> tuple[Rollout, GenerationInfo]:
        """The run's prompts sampled under its adapter (the reference rows under none)."""
        state = self._activate(run)
        gen = state.generator
        gen.lean = self.lean if gen.decoder == "lean" else None  # one packed base for every run
        try:
            return gen.generate(prompts, iteration, with_texts)
        finally:
            self.lean = self.lean or gen.lean
            release_memory()

    def batched(self, runs: list[str]) -> str | None:
        """How these runs' prompts share one sampling call: `lean` (the lean loop) or `transformers`
        (its forward, with the reference rows: models/mixed.py), or None (single-turn runs of one
        decoder only; a run without reference log-probs samples through generate(), run by run)."""
        gens = [self.runs[run].generator for run in runs]
        decoders = {g.decoder for g in gens}
        if len(gens) < 2 or len(decoders) != 1 or any(g.env is not None for g in gens):
            return None
        if not all(g.cfg.reference_logprobs_on() for g in gens):
            return None
        return decoders.pop()

    def generate_many(self, requests: list[tuple[str, list, int, bool]]) -> list:
        """Every run's prompts in ONE sampling call, each row under its run's adapter (and the reference
        rows under none, in the same steps; per-row temperature and length): requests are (run, prompts,
        iteration, with_texts). Runs that cannot share a call (multi-turn episodes, different decoders,
        no reference log-probs) are sampled run by run. -> [rollout, info] per request, flattened, in their order."""
        runs = [run for run, *_ in requests]
        how = self.batched(runs)
        if how is None:
            return [part for r in requests for part in self.generate(*r)]
        gens = [self.runs[run].generator for run in runs]
        mixed = []
        for (run, prompts, iteration, _), gen in zip(requests, gens):
            if gen.version < 0:
                raise StaleAdapterError(f"run {run} has no adapter yet: sync one before generating")
            cfg = gen.cfg
            mixed.append(
                MixedRequest(
                    self.runs[run].adapter,
                    [p.text if isinstance(p, Prompt) else p for p in prompts],
                    cfg.generate.max_new_tokens,
                    cfg.generate.temperature,
                    cfg.samples_per_prompt(),
                    seeds.sampling(cfg.run.seed, iteration, gen.rank),  # the run's own stream, as alone
                    gen.version,
                )
            )
        try:
            with dequantized_int8(self.model, gens[0].dequant):
                if how == "lean":
                    self.lean = self.lean or LeanDecoder(self.model)
                    rollouts = sample_mixed(self.lean, gens[0].tokenizer, mixed)
                else:
                    rollouts = sample_mixed_transformers(self.model, gens[0].tokenizer, mixed, gens[0].device)
        finally:
            release_memory()
        out = []
        for (_, prompts, _, with_texts), gen, rollout in zip(requests, gens, rollouts):
            out += list(gen.finish(rollout, prompts, gen.cfg.samples_per_prompt(), with_texts))
        return out

    # ------------------------------------------------------------------ learner role (per run)
    def publish(self, run: str) -> tuple[AdapterPayload, dict]:
        return self.runs[run].learner.publish()

    def learn(self, run: str, rollouts: list[Rollout], scores: list, iteration: int) -> tuple[dict, AdapterPayload]:
        state = self._activate(run)
        try:
            return state.learner.learn(rollouts, scores, iteration)
        finally:
            state.learner.optimizer.zero_grad(set_to_none=True)
            release_memory()

    def join_group(self, host: str, port: int, rank: int, world: int) -> int:
        """A learner host becomes rank `rank` of `world` data-parallel learner hosts: every run's learner
        trains in the one process group (the driver has the runs learn in the same order on every rank)."""
        learners = [state.learner for state in self.runs.values()]
        dp = join(host, port, rank, world, learners[0].device)
        for learner in learners:
            learner.use_group(dp)
        return rank

    def checkpoint(self, run: str) -> dict[str, bytes]:
        return self.runs[run].learner.checkpoint()

    def restore(self, run: str, files: dict[str, bytes]) -> int:
        return self.runs[run].learner.restore(files)
