"""Pure-torch RLHF algorithm pieces: masked stats, advantages, KL, PPO losses.

Depends only on torch so it can be unit-tested and reused by any worker.
"""

from .advantages import compute_gae, group_advantages
from .kl import AdaptiveKLController, FixedKLController, kl_penalty, shape_rewards
from .losses import entropy_from_logits, policy_loss, value_loss
from .stats import masked_mean, masked_var, masked_whiten

__all__ = [
    "masked_mean",
    "masked_var",
    "masked_whiten",
    "compute_gae",
    "group_advantages",
    "kl_penalty",
    "shape_rewards",
    "FixedKLController",
    "AdaptiveKLController",
    "policy_loss",
    "value_loss",
    "entropy_from_logits",
]
