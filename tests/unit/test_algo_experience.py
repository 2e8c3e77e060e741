"""algo.estimate_advantages / algo.sequence_kl: the learner's data path as pure functions, checked
against hand-computed values (2 x 2 examples, arithmetic in the comments)."""

import math

import pytest
import torch

from rlhf_ray import algo


def t(x):
    return torch.tensor(x, dtype=torch.float32)


def close(a, b, atol=1e-5):
    assert torch.allclose(a, t(b) if not isinstance(b, torch.Tensor) else b, atol=atol), (a, b)


LP = t([[0.5, 0.2], [0.1, 0.0]])
REF = t([[0.3, 0.2], [0.1, 0.1]])
MASK = t([[1, 1], [1, 0]])  # row 1 ends after one token


def test_grpo_folds_the_summed_kl_into_the_sequence_reward():
    # k1 KL = lp - ref = [[0.2, 0], [0, -0.1]], masked -> [[0.2, 0], [0, 0]]; sums [0.2, 0]
    # sequence rewards with kl_coef 0.5: [1 - 0.1, 3 - 0] = [0.9, 3.0]
    # one group of 2: mean 1.95, unbiased std |3 - 0.9| / sqrt(2) = 1.48492
    adv, returns, kl = algo.estimate_advantages(
        t([1.0, 3.0]), LP, REF, MASK, estimator="grpo", kl_coef=0.5, kl_kind="k1", group_size=2
    )
    a = 1.05 / (2.1 / math.sqrt(2) + 1e-6)
    close(kl, [[0.2, 0.0], [0.0, 0.0]])
    close(adv, [[-a, -a], [a, 0.0]])  # one advantage per sequence, spread over its real tokens
    assert returns is None


def test_gae_with_unit_discount_is_reward_to_go_minus_values():
    # shaped rewards (k1, kl_coef 1): row 0 [-0.2, 0 + score 2] = [-0.2, 2]; row 1 [0 + score -1, pad]
    # gamma = lambda = 1: A_t = sum_{s>=t} r_s - V_t
    values = t([[0.5, 1.0], [0.25, 9.0]])
    adv, returns, kl = algo.estimate_advantages(
        t([2.0, -1.0]), LP, REF, MASK, estimator="gae", kl_coef=1.0, kl_kind="k1", values=values
    )
    close(adv, [[1.8 - 0.5, 2.0 - 1.0], [-1.0 - 0.25, 0.0]])
    close(returns, [[1.8, 2.0], [-1.0, 0.0]])  # returns = advantages + values on real tokens
    close(algo.sequence_kl(kl, MASK), t(0.1))  # (0.2 + 0) / 2 sequences


def test_gae_whitening_and_a_missing_critic():
    values = torch.zeros(2, 2)
    adv, _, _ = algo.estimate_advantages(
        t([2.0, -1.0]), LP, REF, MASK, estimator="gae", kl_coef=1.0, kl_kind="k1", values=values, whiten=True
    )
    assert abs(float(algo.masked_mean(adv, MASK))) < 1e-6  # whitened over real tokens only
    with pytest.raises(ValueError, match="gae needs values"):
        algo.estimate_advantages(t([1.0, 1.0]), LP, REF, MASK, estimator="gae", kl_coef=0.1, kl_kind="k1")


def test_sequence_kl_ignores_padding_garbage():
    kl = t([[0.2, 0.1], [0.3, 1e9]])  # the padded position holds garbage
    close(algo.sequence_kl(kl, MASK), t((0.3 + 0.3) / 2))


def test_group_baselines_leave_out_samples_no_source_scored():
    scores = t([1.0, 5.0, 3.0, 0.0, 2.0, 4.0])  # two groups of 3; sample 1 and sample 3 not valid
    valid = torch.tensor([True, False, True, False, True, True])
    # group 0: valid [1, 3]: mean 2, unbiased std sqrt(2); group 1: valid [2, 4]: mean 3, std sqrt(2)
    s = math.sqrt(2) + 1e-6
    close(algo.group_advantages(scores, 3, "grpo", valid=valid), [-1 / s, 0.0, 1 / s, 0.0, -1 / s, 1 / s])
    # rloo: each valid sample minus the mean of the other valid ones
    close(algo.group_advantages(scores, 3, "rloo", valid=valid), [1 - 3, 0.0, 3 - 1, 0.0, 2 - 4, 4 - 2])
    # a group with a single valid sample has no baseline: all zero
    lone = torch.tensor([True, False, False, True, True, True])
    assert algo.group_advantages(scores, 3, "grpo", valid=lone)[:3].abs().sum() == 0
    # all valid: exactly the unmasked formula
    everyone = torch.ones(6, dtype=torch.bool)
    assert torch.equal(
        algo.group_advantages(scores, 3, "grpo", valid=everyone), algo.group_advantages(scores, 3, "grpo")
    )
