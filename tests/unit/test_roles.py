"""The PPO roles as plain classes (no Ray): sync discipline, exact first-step ratios, checkpoints."""

from __future__ import annotations

import pytest
import torch

from rlhf_ray.actors.generator import Generator, StaleAdapterError
from rlhf_ray.actors.learner import Learner
from rlhf_ray.actors.scorer import RewardScorer
from rlhf_ray.config.load import load_config
from rlhf_ray.errors import StaleRolloutError

SMOKE_ONE_STEP = ["ppo.epochs=1", "ppo.mini_batch_size=4", "ppo.batch_size=4"]
PROMPTS = ["This movie was", "The plot", "I loved", "Awful"]


@pytest.fixture
def roles(tiny_lm, tiny_classifier):
    """Fresh roles per test (about a second): no test depends on what another did to them."""
    # One PPO step over the whole batch: the only minibatch sees exactly the sampling-time policy.
    # The adaptive KL controller moves after a step, so a restored coefficient is a real check.
    cfg = load_config("configs/smoke.yaml", [*SMOKE_ONE_STEP, "algo.kl_controller=adaptive"])
    return cfg, Generator(cfg, tiny_lm), RewardScorer(cfg, tiny_classifier), Learner(cfg, tiny_lm)


def learn_once(gen: Generator, scorer: RewardScorer, learner: Learner) -> dict:
    gen.load_adapter(learner.publish()[0])
    rollout, _ = gen.generate(PROMPTS, iteration=1)
    metrics, _ = learner.learn([rollout], [scorer.score(rollout)], iteration=1)
    return metrics


def test_generator_refuses_to_sample_without_an_adapter(roles):
    with pytest.raises(StaleAdapterError):
        roles[1].generate(["a prompt"], iteration=1)  # a fresh generator: never synced


def test_first_update_starts_at_ratio_one_and_versions_advance(roles):
    _, gen, scorer, learner = roles
    payload, receipt = learner.publish()
    assert gen.load_adapter(payload) == (receipt["version"], receipt["sha256"])
    rollout, info = gen.generate(PROMPTS, iteration=1, with_texts=True)
    assert info.policy_version == learner.version and info.responses == rollout.responses
    scores = scorer.score(rollout)
    metrics, new_payload = learner.learn([rollout], [scores], iteration=1)
    # Sampler, old log-probs and the update share one numerical mode: nothing is clipped at ratio 1.
    assert metrics["policy/approx_kl"] == 0.0 and metrics["policy/clipfrac"] == 0.0
    assert metrics["policy/version"] == 1 and new_payload.version == 1
    assert new_payload.sha256 != payload.sha256
    with pytest.raises(StaleRolloutError):
        learner.learn([rollout], [scores], iteration=2)  # sampled with v0, learner is at v1


def test_checkpoint_restores_adapter_optimizer_and_kl_state(roles, tiny_lm):
    _, gen, scorer, learner = roles
    coef = learner.kl_ctl.value
    learn_once(gen, scorer, learner)  # optimizer moments, a moved KL coefficient, version 1 to restore
    assert learner.version == 1 and learner.kl_ctl.value != coef and learner.optimizer.state_dict()["state"]
    files = learner.checkpoint()
    assert {"policy.safetensors", "optimizer.pt", "learner_state.json", "adapter/adapter_config.json"} <= set(files)
    other = Learner(
        load_config("configs/smoke.yaml", [*SMOKE_ONE_STEP, "algo.kl_controller=adaptive", "run.seed=5"]), tiny_lm
    )
    assert other.adapter().sha256 != learner.adapter().sha256
    assert other.restore(files) == learner.version == 1
    assert other.adapter().sha256 == learner.adapter().sha256
    a, b = learner.optimizer.state_dict()["state"], other.optimizer.state_dict()["state"]
    assert a and a.keys() == b.keys() and all(torch.equal(a[k]["exp_avg"], b[k]["exp_avg"]) for k in a)
    assert other.kl_ctl.value == learner.kl_ctl.value


def test_rloo_learner_has_no_critic_and_learns(tiny_lm, tiny_classifier):
    cfg = load_config(
        "configs/smoke.yaml",
        [
            "algo.advantage=rloo",
            "algo.group_size=2",
            "ppo.batch_size=2",
            "ppo.mini_batch_size=2",
            "algo.kl_controller=adaptive",
        ],
    )
    gen, scorer, learner = Generator(cfg, tiny_lm), RewardScorer(cfg, tiny_classifier), Learner(cfg, tiny_lm)
    assert learner.value_head is None
    gen.load_adapter(learner.adapter())
    rollout, _ = gen.generate(["This movie was", "The plot"], iteration=1)
    assert len(rollout) == 4 and rollout.prompts[0] == rollout.prompts[1]  # 2 samples per prompt, contiguous
    coef = learner.kl_ctl.value
    metrics, payload = learner.learn([rollout], [scorer.score(rollout)], iteration=1)
    assert "value/loss" not in metrics and metrics["policy/version"] == 1 and payload.version == 1
    assert metrics["kl/coef"] == coef and learner.kl_ctl.value != coef  # the adaptive controller moved
