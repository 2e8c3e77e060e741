"""Issue 10 on the plain roles (no Ray): the first micro-step's forward doubles as its rows' old-log-prob
pass (one pass fewer, same update), and lagging rollouts get old log-probs from the adapter
that sampled them, within ppo.max_policy_lag."""

from __future__ import annotations

import pytest
import torch

from rlhf_ray.actors.generator import Generator
from rlhf_ray.actors.learner import Learner
from rlhf_ray.actors.scorer import RewardScorer
from rlhf_ray.config.load import load_config
from rlhf_ray.errors import StaleRolloutError

# the learner runs its own reference pass here (on a CPU `auto` would move it into the generator)
WHOLE_BATCH = ["ppo.epochs=2", "ppo.batch_size=4", "ppo.mini_batch_size=4", "generate.reference_logprobs=false"]


def _count_forwards(learner: Learner) -> list[int]:
    calls = [0]
    inner = learner._forward

    def counting(*args, **kwargs):
        calls[0] += 1
        return inner(*args, **kwargs)

    learner._forward = counting
    return calls


@pytest.fixture(scope="module")
def batch(tiny_lm, tiny_classifier):
    cfg = load_config("configs/smoke.yaml", WHOLE_BATCH)
    gen, scorer = Generator(cfg, tiny_lm), RewardScorer(cfg, tiny_classifier)
    gen.load_adapter(Learner(cfg, tiny_lm).adapter())
    rollout, _ = gen.generate(["This movie was", "The plot", "I loved", "Awful"], iteration=1)
    return rollout, scorer.score(rollout).rewards


@pytest.mark.parametrize(
    "overrides,forwards",
    [
        (WHOLE_BATCH, (4, 3)),  # old + ref + 2 epochs x 1 step; the first step's forward is the old pass now
        # old, ref in 2 chunks + 4 steps; now: first step rows (with grad) + 1 old chunk + 2 ref + 3 more steps
        (WHOLE_BATCH + ["ppo.mini_batch_size=2"], (2 + 2 + 4, 1 + 1 + 2 + 3)),
    ],
)
def test_first_micro_step_reuses_its_forward_and_updates_the_same(tiny_lm, batch, overrides, forwards):
    rollout, scores = batch
    cfg = load_config("configs/smoke.yaml", overrides)
    fused, plain = Learner(cfg, tiny_lm), Learner(cfg, tiny_lm)
    plain._first_rows = lambda batch, orders, lag: None  # the pre-issue-10 path: a separate old-log-prob pass
    fused_calls, plain_calls = _count_forwards(fused), _count_forwards(plain)
    m_fused, p_fused = fused.learn([rollout], [scores], iteration=1)
    m_plain, p_plain = plain.learn([rollout], [scores], iteration=1)
    assert (plain_calls[0], fused_calls[0]) == forwards
    # abs 1e-6: kl/mean is ~0 here, and AVX2 kernels leave one float32 ulp of a log-prob (1.2e-7) in it
    for key in ("policy/loss", "policy/approx_kl", "kl/mean", "value/loss", "advantages/mean"):
        assert m_fused[key] == pytest.approx(m_plain[key], rel=1e-5, abs=1e-6), key
    a, b = fused.model.state_dict(), plain.model.state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a if "lora_" in k)


def test_lagging_rollout_is_scored_by_the_adapter_that_sampled_it(tiny_lm, batch):
    rollout, scores = batch
    cfg = load_config("configs/smoke.yaml", WHOLE_BATCH + ["ppo.overlap=true", "ppo.max_policy_lag=1"])
    learner = Learner(cfg, tiny_lm)
    with torch.no_grad():
        at_v0 = learner.make_experience(rollout, scores, 0.05)[0].old_logprobs.detach()
    m1, _ = learner.learn([rollout], [scores], iteration=1)  # v0 -> v1
    assert m1["policy/lag"] == 0
    v1_sha = learner.adapter().sha256
    with learner.history.policy_at(learner.model, learner.value_head, 0, learner.version):
        again = learner.make_experience(rollout, scores, 0.05)[0].old_logprobs
    assert torch.equal(again, at_v0)  # exactly the sampling policy's numbers
    assert learner.adapter().sha256 == v1_sha  # the current adapter is back, bit for bit
    m2, _ = learner.learn([rollout], [scores], iteration=2)  # sampled with v0, learner at v1: lag 1 is allowed
    assert m2["policy/lag"] == 1 and m2["policy/approx_kl"] != 0.0  # the ratio is off-policy, not reset to 1
    with pytest.raises(StaleRolloutError, match="lag 2"):
        learner.learn([rollout], [scores], iteration=3)  # v0 rollouts at v2: beyond ppo.max_policy_lag


def test_on_policy_learner_keeps_no_history(tiny_lm, batch):
    rollout, scores = batch
    learner = Learner(load_config("configs/smoke.yaml", WHOLE_BATCH), tiny_lm)
    learner.learn([rollout], [scores], iteration=1)
    assert learner.history.states == {}
    with pytest.raises(StaleRolloutError, match="lag 1"):
        learner.learn([rollout], [scores], iteration=2)


def test_reference_logprobs_from_the_generator_skip_the_learners_reference_pass(tiny_lm, tiny_classifier):
    """generate.reference_logprobs: the rollout carries the reference log-probs, the learner runs one
    forward fewer, and the update matches the learner computing them itself (same samples, same seed:
    transformers' decode steps, whose draws are generate's; the lean loop's are in test_decode)."""
    prompts = ["This movie was", "The plot", "I loved", "Awful"]
    out = {}
    for on in (False, True):
        cfg = load_config(
            "configs/smoke.yaml",
            WHOLE_BATCH
            + [
                f"generate.reference_logprobs={str(on).lower()}",
                "generate.temperature=0.7",
                "generate.decoder=transformers",
            ],
        )
        learner, gen = Learner(cfg, tiny_lm), Generator(cfg, tiny_lm)
        gen.load_adapter(learner.adapter())
        rollout, _ = gen.generate(prompts, iteration=1)
        assert (rollout.ref_logprobs is not None) == on
        calls = _count_forwards(learner)
        metrics, _ = learner.learn([rollout], [RewardScorer(cfg, tiny_classifier).score(rollout)], iteration=1)
        out[on] = (rollout, calls[0], metrics, {k: v for k, v in learner.model.state_dict().items() if "lora_" in k})
    (r_off, n_off, m_off, w_off), (r_on, n_on, m_on, w_on) = out[False], out[True]
    assert torch.equal(r_off.response_ids, r_on.response_ids)  # the same samples either way
    assert n_on == n_off - 1  # one minibatch: the reference pass was one forward
    for key in ("policy/loss", "kl/mean", "value/loss", "advantages/mean"):
        assert m_on[key] == pytest.approx(m_off[key], rel=1e-3, abs=1e-5), key
    assert all(torch.allclose(w_on[k], w_off[k], atol=1e-5) for k in w_off)
