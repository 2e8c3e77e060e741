"""Generator role: samples responses from the quantized policy with the latest synced adapter."""

from __future__ import annotations

from rlhf_ray.actors.common import init_process, load_policy
from rlhf_ray.batch import AdapterPayload, GenerationInfo, Prompt, Rollout
from rlhf_ray.config.schema import Config
from rlhf_ray.data.prompts import rollout_rows
from rlhf_ray.envs.episodes import turn_of
from rlhf_ray.envs.runner import EnvRunner, EnvSpec
from rlhf_ray.errors import ConfigError
from rlhf_ray.models.adapter import import_adapter
from rlhf_ray.models.assets import materialize
from rlhf_ray.models.decode import LeanDecoder, held_bytes, sample_lean, unsupported
from rlhf_ray.models.dequant import cache_fits, dequant_enabled, dequantized_int8
from rlhf_ray.models.generate import sample, sample_with_reference
from rlhf_ray.models.policy import load_tokenizer, ppo_numerics, role_device
from rlhf_ray.store import seeds
from rlhf_ray.store.artifacts import ModelRef


class StaleAdapterError(RuntimeError):
    """A generator asked to sample before it received any adapter."""


class Generator:
    def __init__(self, cfg: Config, policy: ModelRef, rank: int = 0, shared=None, env: EnvSpec | None = None):
        """shared: a SharedPolicy (fused layout) to sample from instead of loading a base of our own;
        env: the run's environments (multi-turn episodes), None for one response per prompt."""
        init_process(cfg)
        policy_path = materialize(policy, cfg.cache_dir())  # on this node: no shared disk assumed
        self.cfg, self.rank = cfg, rank
        if shared is not None:
            self.device, self.tokenizer, self.model = shared.device, shared.tokenizer, shared.model
        else:
            self.device = role_device(cfg.cluster.generator_gpus)
            self.tokenizer = load_tokenizer(policy_path)
            self.model = ppo_numerics(load_policy(cfg, policy_path, self.device, gradient_checkpointing=False))
        self.version, self.adapter_hash = -1, ""
        self.lean: LeanDecoder | None = None
        self.dequant = dequant_enabled(cfg.model.dequant_cache, self.model)
        self.env = EnvRunner(env, cfg, self.tokenizer) if env is not None else None
        _ = self.decoder  # a forced generate.decoder=lean that cannot apply fails here, at start

    @property
    def decoder(self) -> str:
        """generate.decoder resolved for this model on this role's device: `lean` or `transformers`."""
        setting = self.cfg.generate.decoder
        if not self.cfg.reference_logprobs_on() or setting == "transformers":
            return "transformers"
        reason = unsupported(self.model, self.device)
        if reason is None and (setting == "lean" or self.dequant and cache_fits(held_bytes(self.model))):
            return "lean"
        if setting == "lean":
            raise ConfigError("generate.decoder", f"lean does not apply to this policy: {reason}",
                              "set generate.decoder=auto or transformers")  # fmt: skip
        return "transformers"

    def load_adapter(self, payload: AdapterPayload) -> tuple[int, str]:
        """Install a new adapter after verifying its hash; returns (version, verified hash)."""
        self.adapter_hash = import_adapter(self.model, payload)
        self.version = payload.version
        return self.version, self.adapter_hash

    def generate(
        self, prompts: list[Prompt] | list[str], iteration: int, with_texts: bool = False
    ) -> tuple[Rollout, GenerationInfo]:
        """prompts: what the driver's stream drew (plain strings too, for the bench and tests); the
        rollout carries each one's raw prompt and dataset columns for reward functions."""
        if self.version < 0:
            raise StaleAdapterError(f"generator-{self.rank} has no adapter yet: sync one before generating")
        g, group = self.cfg.generate, self.cfg.samples_per_prompt()
        seed = seeds.sampling(self.cfg.run.seed, iteration, self.rank)
        with dequantized_int8(self.model, self.dequant):  # bit-identical, each int8 weight dequantized once
            if self.env is None:
                texts = [p.text if isinstance(p, Prompt) else p for p in prompts]
                rollout = self._sample(texts, group, g.max_new_tokens, seed)
            else:
                rollout = self._episodes(prompts, group, iteration, seed)
        return self.finish(rollout, prompts, group, with_texts)

    def finish(
        self, rollout: Rollout, prompts: list[Prompt] | list[str], group: int, with_texts: bool
    ) -> tuple[Rollout, GenerationInfo]:
        """A sampled rollout with its raw prompts and dataset columns, and what the driver reads of it."""
        rollout.raw_prompts, rollout.columns = rollout_rows(prompts, group)
        info = GenerationInfo(
            self.version,
            self.adapter_hash,
            len(rollout),
            float(rollout.loss_mask.sum(1).float().mean()),
            rollout.prompts if with_texts else None,
            rollout.responses if with_texts else None,
            [{"stop": e.stop, "error": e.error} for e in rollout.episodes or [] if e.error],
        )
        return rollout, info

    def _sample(self, prompts: list[str] | list[list[int]], group: int, max_new_tokens: int, seed: int) -> Rollout:
        """One sampling call through this generator's decode path (prompts as text, or as token ids)."""
        g = self.cfg.generate
        common = dict(max_new_tokens=max_new_tokens, temperature=g.temperature, group_size=group,
                      policy_version=self.version, seed=seed)  # fmt: skip
        if self.decoder == "lean":  # the reference pass rides in the decode steps, our own loop
            self.lean = self.lean or LeanDecoder(self.model)  # the frozen base, laid out once
            return sample_lean(self.lean, self.tokenizer, prompts, **common)
        if self.cfg.reference_logprobs_on():  # the reference pass rides in transformers' decode steps
            return sample_with_reference(self.model, self.tokenizer, prompts, device=self.device, **common)
        return sample(self.model, self.tokenizer, prompts, top_k=g.top_k, top_p=g.top_p, device=self.device, **common)

    def _episodes(self, prompts: list[Prompt] | list[str], group: int, iteration: int, seed: int) -> Rollout:
        """Multi-turn episodes, batched turn by turn through `_sample`; each prompt's episodes reset
        from one seed of (run.seed, iteration, prompt), so a group starts alike and a resume replays it."""

        def sample_turn(contexts: list[list[int]], max_new_tokens: int, turn: int):
            return turn_of(self._sample(contexts, 1, max_new_tokens, seeds.turn_sampling(seed, turn)))

        starts = [seeds.episode(self.cfg.run.seed, iteration, self.rank * 100_003 + j) for j in range(len(prompts))]
        return self.env.run(
            prompts, group, starts, sample_turn, policy_version=self.version,
            temperature=self.cfg.generate.temperature, with_ref=self.cfg.reference_logprobs_on(),
        )  # fmt: skip
