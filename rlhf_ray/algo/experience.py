"""From sequence scores and log-probs to the tensors a PPO update consumes: KL-shaped rewards,
advantages (GAE, GRPO or RLOO), returns and the per-token KL, plus the sequence KL the KL
controller reads. Pure torch: every setting arrives as a number or a string."""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from .advantages import compute_gae, group_advantages
from .kl import kl_penalty, shape_rewards
from .stats import as_bool_mask, masked_whiten

__all__ = ["estimate_advantages", "sequence_kl"]


def estimate_advantages(
    scores: torch.Tensor,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    *,
    estimator: str,
    kl_coef: float,
    kl_kind: str,
    values: Optional[torch.Tensor] = None,
    gamma: float = 1.0,
    gae_lambda: float = 1.0,
    whiten: bool = False,
    group_size: int = 1,
) -> Tuple[torch.Tensor, Optional[torch.Tensor], torch.Tensor]:
    """``gae``: the KL penalty on every token and the score at the last one (``shape_rewards``), then
    GAE against ``values`` (optionally whitened). ``grpo``/``rloo``: the KL summed over the response is
    folded into the sequence reward ``score - kl_coef * sum_t kl_t``, whose group baseline gives one
    advantage per sequence, spread over its real tokens (no critic, no returns); a row whose mask is
    empty is left out of its group's baseline.

    Shapes:
        scores: (B,); logprobs, ref_logprobs, mask: (B, T); values: (B, T) for gae, else None.
        returns: (advantages (B, T), returns (B, T) or None, kl (B, T)), all 0 at padded positions.
    """
    if estimator == "gae":
        if values is None:
            raise ValueError("gae needs values (a critic)")
        rewards, kl = shape_rewards(scores, logprobs, ref_logprobs, mask, kl_coef, kl_kind)
        advantages, returns = compute_gae(rewards, values, mask, gamma, gae_lambda)
        if whiten:
            advantages = masked_whiten(advantages, mask)
        return advantages, returns, kl
    kl = kl_penalty(logprobs, ref_logprobs, kl_kind) * mask
    seq_reward = scores - kl_coef * kl.sum(1)
    # a row with no response token left in the mask (no reward source applied) stays out of the baselines
    valid = as_bool_mask(mask).any(dim=1)
    advantages = group_advantages(seq_reward, group_size, estimator, valid=valid)[:, None] * mask
    return advantages, None, kl


def sequence_kl(kl: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-token KL summed over each response, averaged over responses (the controller's input).

    Shapes: kl, mask: (B, T) -> 0-d tensor."""
    return (kl * as_bool_mask(mask).to(kl.dtype)).sum(1).mean()
