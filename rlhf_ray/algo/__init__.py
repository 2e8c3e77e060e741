"""PURE torch: advantages, losses, KL penalties and controllers, masked statistics.

Imports torch only (no config, no models, no Ray): every function takes tensors and numbers and
has a `Shapes:` docstring. Tested against hand-computed values in tests/unit/test_algo.py."""

from .advantages import compute_gae, group_advantages
from .batching import token_budget_batches
from .experience import estimate_advantages, sequence_kl
from .kl import AdaptiveKLController, FixedKLController, kl_penalty, shape_rewards
from .losses import entropy_from_logprobs, kl_loss, policy_loss, value_loss
from .stats import masked_mean, masked_var, masked_whiten

__all__ = [
    "masked_mean",
    "masked_var",
    "masked_whiten",
    "compute_gae",
    "group_advantages",
    "token_budget_batches",
    "estimate_advantages",
    "sequence_kl",
    "kl_penalty",
    "shape_rewards",
    "FixedKLController",
    "AdaptiveKLController",
    "policy_loss",
    "value_loss",
    "kl_loss",
    "entropy_from_logprobs",
]
