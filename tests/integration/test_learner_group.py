"""Two learner actors as one LearnerGroup on the session's Ray: process group over Ray, lockstep
adapters checked every step, rank 0 publishes, every rank restores."""

from __future__ import annotations

import pytest
import ray
import torch

from rlhf_ray.batch import Rollout
from rlhf_ray.config.load import load_config
from rlhf_ray.runtime.learner_group import LearnerGroup

OVERRIDES = ["ppo.batch_size=4", "ppo.mini_batch_size=2", "ppo.epochs=1"]


def synthetic_rollout() -> tuple[Rollout, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    response_mask = (torch.arange(5)[None, :] < torch.tensor([5, 2, 4, 3])[:, None]).long()
    rollout = Rollout(
        torch.randint(5, 500, (4, 3), generator=g),
        torch.ones(4, 3, dtype=torch.long),
        torch.randint(5, 500, (4, 5), generator=g),
        response_mask,
        ["p"] * 4,
        ["r"] * 4,
        policy_version=0,
    )
    return rollout, torch.randn(4, generator=g)


pytestmark = pytest.mark.usefixtures("ray_session")


def test_two_learner_actors_stay_in_lockstep(tiny_lm):
    cfg = load_config("configs/smoke.yaml", OVERRIDES)
    group = LearnerGroup.start(cfg, tiny_lm, [{"num_cpus": 0.25}, {"num_cpus": 0.25}])
    try:
        files = ray.get(group.checkpoint())
        rollout, scores = synthetic_rollout()
        metrics_ref, payload_ref = group.learn([ray.put(rollout)], [ray.put(scores)], 1)
        metrics, payload = ray.get(metrics_ref), ray.get(payload_ref)
        hashes = {ray.get(a.publish.options(num_returns=2).remote()[1])["sha256"] for a in group.actors}
        assert hashes == {payload.sha256} and metrics["policy/version"] == 1
        assert ray.get(group.restore(files)) == 0  # both ranks back at the initial adapter
        assert ray.get(group.publish()[1])["sha256"] != payload.sha256
    finally:
        for actor in group.actors:
            ray.kill(actor)
