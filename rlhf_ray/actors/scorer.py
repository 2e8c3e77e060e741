"""RewardScorer role: turns a rollout's decoded texts into one scalar score per sample."""

from __future__ import annotations

import torch

from rlhf_ray.actors.common import init_process
from rlhf_ray.batch import Rollout
from rlhf_ray.config.schema import Config
from rlhf_ray.models.assets import materialize
from rlhf_ray.models.policy import role_device
from rlhf_ray.rewards.classifier import RewardModel
from rlhf_ray.store.artifacts import ModelRef


class RewardScorer:
    def __init__(self, cfg: Config, reward: ModelRef):
        init_process(cfg)
        reward_path = materialize(reward, cfg.cache_dir())  # on this node: no shared disk assumed
        r = cfg.reward
        self.input = r.input
        self.model = RewardModel(
            reward_path,
            score=r.score,
            quant=r.quant,
            device=role_device(cfg.cluster.scorer_gpus),
            batch_size=r.batch_size,
            max_length=r.max_length,
        )

    def texts(self, rollout: Rollout) -> list[str]:
        if self.input == "response":
            return rollout.responses
        return [p + r for p, r in zip(rollout.prompts, rollout.responses)]

    def score(self, rollout: Rollout) -> torch.Tensor:
        """Shapes: rollout of B samples -> (B,) float32 (raises UserError on NaN/inf)."""
        return self.model.score(self.texts(rollout))
