"""Multi-turn episodes through the real roles (no Ray): a quantized tiny policy plays an environment
turn by turn, and the learner counts its actions only."""

from __future__ import annotations

import pytest
import torch

from rlhf_ray import algo
from rlhf_ray.actors.generator import Generator
from rlhf_ray.actors.learner import Learner
from rlhf_ray.config.load import load_config
from rlhf_ray.envs.runner import EnvRunner, env_spec
from rlhf_ray.errors import ConfigError, UserError
from rlhf_ray.models.forward import response_stats

FIXTURES = "tests/env_fixtures.py"
PROMPTS = ["Count down", "Go on", "Again", "More"]


def config(policy, *overrides):
    return load_config(
        "configs/smoke.yaml",
        [f"model.policy={policy}", f"env.factory={FIXTURES}:Countdown", "env.max_tokens=40", "env.max_turns=3",
         "generate.max_new_tokens=6", "algo.advantage=gae", *overrides],
    )  # fmt: skip


@pytest.fixture(scope="module")
def roles(tiny_chat_lm):
    cfg = config(tiny_chat_lm)
    learner = Learner(cfg, tiny_chat_lm)
    gen = Generator(cfg, tiny_chat_lm, env=env_spec(cfg))
    gen.load_adapter(learner.adapter())
    return cfg, gen, learner


def test_generator_plays_episodes_and_the_reference_rides_along(roles):
    cfg, gen, learner = roles
    rollout, info = gen.generate(PROMPTS, iteration=1, with_texts=True)
    again, _ = gen.generate(PROMPTS, iteration=1)
    assert torch.equal(rollout.response_ids, again.response_ids)  # seeded per (run, iteration): resumable
    assert rollout.action_mask is not None and rollout.episodes is not None
    assert all(e.turns >= 1 and e.stop in ("done", "max_tokens", "max_turns") for e in rollout.episodes)
    assert any(e.turns == 2 and e.stop == "done" for e in rollout.episodes)
    assert (rollout.action_mask <= rollout.response_mask).all()
    assert info.response_length_mean == pytest.approx(float(rollout.loss_mask.sum(1).float().mean()))
    # the reference log-probs the generator computed per turn equal the learner's own reference pass
    with torch.no_grad(), learner.model.disable_adapter():
        ref = response_stats(learner.model, rollout.input_ids, rollout.attention_mask, rollout.prompt_ids.shape[1],
                             temperature=rollout.temperature).logprobs  # fmt: skip
    act = rollout.loss_mask.bool()
    assert torch.allclose(rollout.ref_logprobs[act], ref[act], atol=2e-4)
    assert (rollout.ref_logprobs[~act] == 0).all()


def test_learner_counts_actions_only(roles):
    cfg, gen, learner = roles
    rollout, _ = gen.generate(PROMPTS, iteration=2)
    captured = []
    update = learner.update
    learner.update = lambda exp, orders, first_pass=None: captured.append(exp) or update(exp, orders, first_pass)
    try:
        metrics, _ = learner.learn([rollout], [torch.tensor([1.0, 0.0, 2.0, -1.0])], iteration=2)
    finally:
        learner.update = update
    (exp,) = captured
    obs = rollout.response_mask.bool() & ~rollout.action_mask.bool()
    assert obs.any()
    assert torch.equal(exp.mask, rollout.loss_mask.float())
    assert (exp.advantages[obs] == 0).all() and (exp.kl[obs] == 0).all() and (exp.returns[obs] == 0).all()
    assert metrics["response/length_mean"] == pytest.approx(float(rollout.loss_mask.sum(1).float().mean()))
    assert metrics["env/turns_mean"] >= 1 and 0 <= metrics["env/stop/done"] <= 1
    assert "env/reward_mean" in metrics


def test_observation_positions_change_no_loss_kl_advantage_or_gradient():
    """What lies at observation positions (the policy's log-probs there, the reference's, the values)
    never reaches a loss, a KL, an advantage or a gradient."""
    torch.manual_seed(0)
    mask = torch.tensor([[1, 1, 0, 0, 1, 1], [1, 0, 0, 1, 0, 0]], dtype=torch.float32)  # 0: observations/pad
    scores = torch.tensor([1.0, -0.5])

    def everything(lp_noise, ref_noise, v_noise):
        hole = (mask == 0).float()
        logprobs = torch.randn(2, 6, generator=torch.Generator().manual_seed(1)) - 1 + lp_noise * hole
        logprobs.requires_grad_(True)
        ref = torch.randn(2, 6, generator=torch.Generator().manual_seed(2)) - 1 + ref_noise * hole
        values = torch.randn(2, 6, generator=torch.Generator().manual_seed(3)) + v_noise * hole
        old = logprobs.detach() - 0.1
        adv, ret, kl = algo.estimate_advantages(scores, old, ref, mask, estimator="gae", kl_coef=0.1, kl_kind="k1",
                                                values=values, gamma=1.0, gae_lambda=0.95, whiten=True)  # fmt: skip
        pg, _ = algo.policy_loss(logprobs, old, adv, mask, 0.2)
        loss = pg + 0.1 * algo.kl_loss(logprobs, ref, mask)
        v_loss, _ = algo.value_loss(values + 0.05, values, ret, mask, 0.2)
        loss.backward()
        return adv, ret, kl, loss.detach(), v_loss, logprobs.grad

    base = everything(0.0, 0.0, 0.0)
    moved = everything(5.0, -7.0, 3.0)
    for a, b in zip(base, moved):
        assert torch.allclose(a, b)
    assert (base[-1][mask == 0] == 0).all()  # no gradient flows into an observation position


def test_bad_environments_are_refused_at_start(tiny_chat_lm):
    with pytest.raises(ConfigError, match="env.factory"):
        env_spec(config(tiny_chat_lm, "env.factory=tests/nope.py:X"))
    cfg = config(tiny_chat_lm, f"env.factory={FIXTURES}:Missing")
    with pytest.raises(ConfigError, match="has no function 'Missing'"):
        EnvRunner(env_spec(cfg), cfg, None)
    cfg = config(tiny_chat_lm, f"env.factory={FIXTURES}:NotAnEnv")
    with pytest.raises(UserError, match="no reset or step"):
        EnvRunner(env_spec(cfg), cfg, None)
    cfg = config(tiny_chat_lm, f"env.tools=[{FIXTURES}:undocumented]")
    with pytest.raises(ConfigError, match="no docstring"):
        EnvRunner(env_spec(cfg), cfg, None)
