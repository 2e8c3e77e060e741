"""RewardScorer role: runs the configured reward sources on a rollout shard (see rlhf_ray.rewards.sources)."""

from __future__ import annotations

from rlhf_ray.actors.common import init_process
from rlhf_ray.batch import Rollout, Scores
from rlhf_ray.config.schema import Config
from rlhf_ray.models.policy import role_device
from rlhf_ray.rewards.base import RewardBatch
from rlhf_ray.rewards.sources import RewardSources, SourceSpec, classifier_spec
from rlhf_ray.store.artifacts import ModelRef


class RewardScorer:
    def __init__(self, cfg: Config, reward: list[SourceSpec] | ModelRef):
        """reward: the sources' specs (stages.ppo.reward_sources), or one classifier's model reference."""
        init_process(cfg)
        specs = reward if isinstance(reward, list) else [classifier_spec(reward)]
        self.sources = RewardSources(specs, cfg, device=role_device(cfg.cluster.scorer_gpus))

    def score(self, rollout: Rollout) -> Scores:
        """Shapes: rollout of B samples -> Scores of (B,) rewards, applied and per-source values.
        Raises RewardSourceError (a source failed) or NonFiniteError (one returned NaN/inf)."""
        return self.sources.score(RewardBatch.of(rollout))
