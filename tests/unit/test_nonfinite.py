"""The learner's non-finite guard (plain classes, no Ray): a NaN/inf reward, loss or gradient raises
NonFiniteError and the adapter is never stepped with it."""

from __future__ import annotations

import pytest
import torch

from rlhf_ray.actors.generator import Generator
from rlhf_ray.actors.learner import Learner
from rlhf_ray.config.load import load_config
from rlhf_ray.errors import NonFiniteError

PROMPTS = ["This movie was", "The plot", "I loved", "Awful"]


@pytest.fixture(scope="module")
def setup(tiny_lm):
    cfg = load_config("configs/smoke.yaml", ["ppo.epochs=1", "ppo.mini_batch_size=4", "ppo.batch_size=4"])
    gen, learner = Generator(cfg, tiny_lm), Learner(cfg, tiny_lm)
    gen.load_adapter(learner.adapter())
    rollout, _ = gen.generate(PROMPTS, iteration=1)
    return learner, rollout


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_reward_is_refused_before_any_update(setup, bad):
    learner, rollout = setup
    before = learner.adapter().sha256
    with pytest.raises(NonFiniteError, match="non-finite reward"):
        learner.learn([rollout], [torch.tensor([0.5, bad, 0.1, 0.2])], iteration=1)
    assert learner.adapter().sha256 == before and learner.version == 0


def test_non_finite_gradient_never_reaches_the_adapter(setup):
    learner, rollout = setup
    before, head = learner.adapter().sha256, learner.value_head.summary.bias.detach().clone()
    with torch.no_grad():
        learner.value_head.summary.bias.fill_(float("inf"))  # values inf -> advantages and loss NaN
    try:
        with pytest.raises(NonFiniteError, match="loss/gradient"):
            learner.learn([rollout], [torch.tensor([0.5, 0.3, 0.1, 0.2])], iteration=1)
        # No optimizer step happened: AdamW has no state yet, and the LoRA tensors are unchanged.
        assert not learner.optimizer.state_dict()["state"]
        with torch.no_grad():
            learner.value_head.summary.bias.copy_(head)
        assert learner.adapter().sha256 == before
    finally:
        with torch.no_grad():
            learner.value_head.summary.bias.copy_(head)
