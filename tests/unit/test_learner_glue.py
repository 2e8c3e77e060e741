"""Learner glue on plain roles (no Ray): which log-probs go where, which score lands on which row,
and how generator shards are joined. Expected values come from per-shard computations done here."""

from __future__ import annotations

import pytest
import torch

from rlhf_ray.actors.generator import Generator
from rlhf_ray.actors.learner import Learner
from rlhf_ray.batch import Rollout
from rlhf_ray.config.load import load_config
from rlhf_ray.models.forward import response_stats
from rlhf_ray.models.policy import reference_mode

PROMPTS = ["This movie was", "The plot", "I loved the", "Awful acting and"]


def _roles(tiny_lm, overrides):
    cfg = load_config("configs/smoke.yaml", ["generate.temperature=0.8", "algo.kl_coef=0.3", *overrides])
    learner = Learner(cfg, tiny_lm)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # a non-zero adapter, so the policy and the reference differ
        for name, p in learner.model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    gens = [Generator(cfg, tiny_lm, rank) for rank in range(cfg.cluster.num_generators)]
    for g in gens:
        g.load_adapter(learner.adapter())
    captured = []
    # keep the experience, skip the PPO epochs
    learner.update = lambda exp, orders, first_pass=None: captured.append(exp) or {}
    return cfg, learner, gens, captured


def _shards(gens, iteration=1):
    # As the driver shards prompts: generator i gets prompts[i::n]
    return [g.generate(PROMPTS[i :: len(gens)], iteration)[0] for i, g in enumerate(gens)]


def _per_shard_kl(learner, shards, temperature):
    """Summed k1 KL (policy minus reference) per row, each shard scored with its own padding."""
    out = []
    with torch.no_grad():
        for r in shards:
            args = (learner.model, r.input_ids, r.attention_mask, r.prompt_ids.shape[1])
            old = response_stats(*args, temperature=temperature).logprobs
            with reference_mode(learner.model):
                ref = response_stats(*args, temperature=temperature).logprobs
            out.append(((old - ref) * r.response_mask).sum(1))
    return torch.cat(out)


def test_gae_experience_has_old_and_ref_in_place_and_each_score_on_its_row(tiny_lm):
    cfg, learner, gens, captured = _roles(
        tiny_lm, ["cluster.num_generators=2", "algo.gamma=1.0", "algo.gae_lambda=1.0"]
    )
    shards = _shards(gens)
    scores = [torch.tensor([1.0, -2.0]), torch.tensor([3.5, 0.25])]  # distinct: a misplaced score shows
    learner.learn(shards, scores, iteration=1)
    (exp,) = captured
    mask = exp.rollout.response_mask.bool()
    with torch.no_grad():
        batch = exp.rollout
        args = (learner.model, batch.input_ids, batch.attention_mask, batch.prompt_ids.shape[1])
        policy = response_stats(*args, temperature=0.8).logprobs
        with reference_mode(learner.model):
            reference = response_stats(*args, temperature=0.8).logprobs
    assert not torch.allclose(policy[mask], reference[mask], atol=1e-2)  # the test can tell them apart
    torch.testing.assert_close(exp.old_logprobs[mask], policy[mask])
    torch.testing.assert_close(exp.ref_logprobs[mask], reference[mask])
    # gamma = lambda = 1: the return at the first token is the whole sequence reward,
    # score - kl_coef * sum_t (log pi - log ref), computed here shard by shard.
    expected = torch.cat(scores) - cfg.algo.kl_coef * _per_shard_kl(learner, shards, 0.8)
    torch.testing.assert_close(exp.returns[:, 0], expected, atol=1e-4, rtol=1e-4)


def test_groups_stay_contiguous_and_aligned_across_generator_shards(tiny_lm):
    cfg, learner, gens, captured = _roles(
        tiny_lm,
        [
            "cluster.num_generators=2",
            "algo.advantage=grpo",
            "algo.group_size=2",
            "ppo.batch_size=4",
            "ppo.mini_batch_size=4",
        ],
    )
    shards = _shards(gens)
    batch = Rollout.concat(shards, learner.tokenizer.pad_token_id)
    # each prompt's group_size samples sit next to each other, shard after shard
    expected_prompts = [p for i in range(2) for p in PROMPTS[i::2] for _ in range(2)]
    assert batch.prompts == expected_prompts
    assert batch.responses == [r for s in shards for r in s.responses]
    for row, (shard, local) in enumerate([(s, i) for s in shards for i in range(len(s))]):
        n = int(shard.response_mask[local].sum())
        assert torch.equal(batch.response_ids[row, :n], shard.response_ids[local, :n])
    scores = [torch.tensor([0.5, -1.0, 2.0, 0.0]), torch.tensor([1.5, 1.0, -0.5, 3.0])]
    learner.learn(shards, scores, iteration=1)
    (exp,) = captured
    seq_reward = torch.cat(scores) - cfg.algo.kl_coef * _per_shard_kl(learner, shards, 0.8)
    groups = seq_reward.view(-1, 2)
    expected = ((groups - groups.mean(1, keepdim=True)) / (groups.std(1, keepdim=True) + 1e-6)).flatten()
    torch.testing.assert_close(exp.advantages[:, 0], expected, atol=1e-3, rtol=1e-3)


def test_kl_loss_holds_the_update_near_the_reference(tiny_lm):
    """algo.kl_loss_coef adds the k3 KL to the loss at every step: the same batch moves the policy
    less far from the reference with it than without, and its value is reported as kl/loss."""
    kls = {}
    for coef in (0.0, 20.0):
        cfg = load_config(
            "configs/smoke.yaml", ["ppo.lr=0.02", "ppo.epochs=8", "algo.kl_coef=0", f"algo.kl_loss_coef={coef}"]
        )
        learner = Learner(cfg, tiny_lm)
        gen = Generator(cfg, tiny_lm)
        gen.load_adapter(learner.adapter())
        rollout = gen.generate(PROMPTS * 2, iteration=1)[0]
        metrics, _ = learner.learn([rollout], [torch.linspace(-2.0, 2.0, len(rollout))], iteration=1)
        assert ("kl/loss" in metrics) == (coef > 0) and metrics.get("kl/loss", 0.0) >= 0.0
        kls[coef] = float(_per_shard_kl(learner, [rollout], cfg.generate.temperature).abs().mean())
    assert 0.0 < kls[20.0] < 0.5 * kls[0.0], kls


def test_kl_control_loss_steers_kl_loss_coef(tiny_lm):
    """algo.kl_control=loss: the adaptive controller moves kl_loss_coef (reported as kl/loss_coef; kl/coef,
    the reward penalty's, stays as configured), up by hand-computed steps while KL is above target."""
    cfg = load_config(
        "configs/smoke.yaml",
        [
            "ppo.lr=0.02",
            "algo.kl_coef=0.01",
            "algo.kl_loss_coef=0.5",
            "algo.kl_controller=adaptive",
            "algo.kl_control=loss",
            "algo.kl_target=1e-6",  # any KL above it: the error clips at +0.2
            "algo.kl_horizon=40",
        ],
    )
    learner = Learner(cfg, tiny_lm)
    gen = Generator(cfg, tiny_lm)
    coefs = []
    for iteration in (1, 2, 3):
        gen.load_adapter(learner.adapter())
        rollout = gen.generate(PROMPTS * 2, iteration=iteration)[0]
        metrics, _ = learner.learn([rollout], [torch.linspace(-2.0, 2.0, len(rollout))], iteration=iteration)
        assert metrics["kl/coef"] == 0.01
        coefs.append(metrics["kl/loss_coef"])
    grow = 1 + 0.2 * len(rollout) / 40
    # iteration 1 samples the reference itself (KL 0: below the floor's reach, it stays); then KL > 0
    assert coefs[0] == coefs[1] == 0.5
    assert coefs[2] == pytest.approx(0.5 * grow)
