"""Fused layout: the Generator and Learner roles over ONE quantized base + LoRA in one process.

Separate actors each hold a copy of the base; a 20B base is ~20 GB in 8-bit, so two copies cannot
share a 24 GB card. Here one model serves both roles (veRL's "hybrid engine"): the reference is
still the adapter switched off, the value head lives beside it, and between phases the host drops
what the other phase does not need. The host answers the same calls as the two separate roles,
so the driver cannot tell the layouts apart. Plain class: runs without Ray (jobs/gpu_check.py)."""

from __future__ import annotations

import gc
import hashlib
from dataclasses import dataclass

import torch

from rlhf_ray.actors.common import init_process, load_policy
from rlhf_ray.actors.generator import Generator
from rlhf_ray.actors.learner import Learner
from rlhf_ray.batch import AdapterPayload, GenerationInfo, Rollout
from rlhf_ray.config.schema import Config
from rlhf_ray.envs.runner import EnvSpec
from rlhf_ray.models.adapter import AdapterIntegrityError
from rlhf_ray.models.assets import materialize
from rlhf_ray.models.policy import load_tokenizer, ppo_numerics, role_device
from rlhf_ray.store.artifacts import ModelRef


@dataclass
class SharedPolicy:
    """What the two role views share: the one model, its tokenizer and device."""

    model: object
    tokenizer: object
    device: str


def release_memory() -> None:
    """Return freed activations / KV cache to the device so the next phase can use them."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def confirm_live(payload: AdapterPayload, live: AdapterPayload, whose: str) -> str:
    """The payload's sha256 when it is the adapter the shared weights hold now (version and bytes);
    else AdapterIntegrityError: importing a stale one could roll the learner's weights back."""
    digest = hashlib.sha256(payload.data).hexdigest()
    if (payload.version, digest) != (live.version, live.sha256):
        raise AdapterIntegrityError(
            f"adapter v{payload.version} {digest[:12]} is not {whose} current v{live.version} {live.sha256[:12]}"
        )
    return digest


class FusedPolicyHost:
    def __init__(self, cfg: Config, policy: ModelRef, env: EnvSpec | None = None):
        init_process(cfg)
        policy_path = materialize(policy, cfg.cache_dir())  # on this node: no shared disk assumed
        device = role_device(cfg.fused_gpus())
        torch.manual_seed(cfg.run.seed)  # the same fresh LoRA init as a separate learner with this seed
        shared = SharedPolicy(ppo_numerics(load_policy(cfg, policy_path, device)), load_tokenizer(policy_path), device)
        self.learner = Learner(cfg, policy_path, shared=shared)
        self.generator = Generator(cfg, policy_path, shared=shared, env=env)

    # ------------------------------------------------------------------ generator role
    def load_adapter(self, payload: AdapterPayload) -> tuple[int, str]:
        """Confirm the payload is what the shared weights hold (no copy); a stale or corrupt one is refused.

        Importing it instead could roll the learner's own weights back to an older adapter."""
        digest = confirm_live(payload, self.learner.adapter(), "the fused policy's")
        self.generator.version, self.generator.adapter_hash = payload.version, digest
        return payload.version, digest

    def generate(self, prompts: list[str], iteration: int, with_texts: bool = False) -> tuple[Rollout, GenerationInfo]:
        try:
            return self.generator.generate(prompts, iteration, with_texts)
        finally:
            release_memory()  # the KV cache

    # ------------------------------------------------------------------ learner role
    def publish(self) -> tuple[AdapterPayload, dict]:
        return self.learner.publish()

    def learn(self, rollouts: list[Rollout], scores: list[torch.Tensor], iteration: int) -> tuple[dict, AdapterPayload]:
        try:
            return self.learner.learn(rollouts, scores, iteration)
        finally:
            self.learner.optimizer.zero_grad(set_to_none=True)  # gradients are not needed while sampling
            release_memory()

    def checkpoint(self) -> dict[str, bytes]:
        return self.learner.checkpoint()

    def restore(self, files: dict[str, bytes]) -> int:
        return self.learner.restore(files)
