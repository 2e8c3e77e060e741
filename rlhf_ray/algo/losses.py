"""PPO losses (Schulman et al. 2017, arXiv:1707.06347) and token entropy.

Stats are returned as detached 0-d tensors; converting them to python numbers
(a device sync) is left to the caller.
"""

from __future__ import annotations

from typing import Dict, Tuple

import torch

from .kl import kl_penalty
from .stats import as_bool_mask, masked_mean

__all__ = ["policy_loss", "value_loss", "kl_loss", "entropy_from_logprobs"]


def policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float,
) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """PPO clipped surrogate loss.

    ``loss = masked_mean(max(-A * r, -A * clip(r, 1 - eps, 1 + eps)))`` with
    ``r = exp(logp - old_logp)``.

    Stats (detached 0-d tensors): ``clipfrac`` (fraction of real tokens where
    the clipped term was selected, i.e. strictly larger), ``approx_kl``,
    ``ratio_mean``.

    Shapes:
        logprobs, old_logprobs, advantages, mask: (B, T).
        returns: (loss 0-d, stats).
    """
    m = as_bool_mask(mask)
    zeros = torch.zeros_like(logprobs)
    # where() before exp(): padding may be inf/nan and must not leak into grads.
    log_ratio = torch.where(m, logprobs, zeros) - torch.where(m, old_logprobs, zeros)
    adv = torch.where(m, advantages, zeros)
    ratio = torch.exp(log_ratio)
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = masked_mean(torch.maximum(unclipped, clipped), m)
    with torch.no_grad():
        stats = {
            "clipfrac": masked_mean((clipped > unclipped).to(logprobs.dtype), m),
            # k2 estimator 0.5*(log r)^2 (Schulman 2020, "Approximating KL
            # Divergence"): low variance, as in OpenAI's PPO baselines.
            "approx_kl": masked_mean(0.5 * log_ratio.square(), m),
            "ratio_mean": masked_mean(ratio, m),
        }
    return loss, {name: t.detach() for name, t in stats.items()}


def kl_loss(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-token KL to the reference as a loss term (GRPO's ``beta`` term; OpenRLHF/veRL's KL loss).

    ``loss = masked_mean(exp(ref - logp) - (ref - logp) - 1)``, the k3 estimator (Schulman 2020):
    always >= 0, unbiased, and its gradient ``1 - exp(ref - logp)`` pulls every sampled token's
    log-prob toward the reference at every optimizer step, where a KL penalty in the reward acts
    only through the advantages, one iteration late.

    Shapes:
        logprobs, ref_logprobs, mask: (B, T).
        returns: 0-d loss.
    """
    m = as_bool_mask(mask)
    zeros = torch.zeros_like(logprobs)
    # where() before exp(): padding may be inf/nan and must not leak into grads.
    lp, ref = torch.where(m, logprobs, zeros), torch.where(m, ref_logprobs.to(logprobs.dtype), zeros)
    return masked_mean(kl_penalty(lp, ref, "k3"), m)


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_range_value: float,
) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """Clipped value loss (as in OpenAI baselines PPO2).

    ``v_clip = old + clamp(v - old, -c, c)``;
    ``loss = 0.5 * masked_mean(max((v - R)^2, (v_clip - R)^2))``.

    Stats (detached 0-d tensors): ``clipfrac`` (fraction of real tokens where
    the clipped error is strictly larger), ``error_mean`` (masked mean of the
    unclipped squared error ``(v - R)^2``).

    Shapes:
        values, old_values, returns, mask: (B, T).
        returns: (loss 0-d, stats).
    """
    m = as_bool_mask(mask)
    zeros = torch.zeros_like(values)
    v = torch.where(m, values, zeros)
    old = torch.where(m, old_values, zeros)
    ret = torch.where(m, returns, zeros)
    v_clipped = old + torch.clamp(v - old, -clip_range_value, clip_range_value)
    err = (v - ret).square()
    err_clipped = (v_clipped - ret).square()
    loss = 0.5 * masked_mean(torch.maximum(err, err_clipped), m)
    with torch.no_grad():
        stats = {
            "clipfrac": masked_mean((err_clipped > err).to(values.dtype), m),
            "error_mean": masked_mean(err, m),
        }
    return loss, {name: t.detach() for name, t in stats.items()}


def entropy_from_logprobs(logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-token entropy ``H = -sum(p * log p)`` of a distribution given as log-probabilities (a
    log_softmax's output, which the log-prob of the sampled token is gathered from anyway: no second
    softmax over the vocabulary). Entries with probability 0 (log-prob -inf) contribute 0 instead of
    ``0 * -inf = nan``.

    Shapes:
        logprobs: (B, T, V); mask: (B, T).
        returns: (B, T), 0 at padded positions.
    """
    finite = logprobs.clamp(min=torch.finfo(logprobs.dtype).min)  # -inf -> the lowest finite value
    ent = -(logprobs.exp() * finite).sum(dim=-1)
    return torch.where(as_bool_mask(mask), ent, torch.zeros_like(ent))
