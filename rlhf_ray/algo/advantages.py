"""Advantage estimators: token-level GAE and sequence-level group baselines."""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from .stats import as_bool_mask

__all__ = ["compute_gae", "group_advantages"]

_GROUP_KINDS = ("grpo", "rloo")


def compute_gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float,
    gae_lambda: float,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimation (Schulman et al. 2016, arXiv:1506.02438).

    ``delta_t = r_t + gamma * V_{t+1} - V_t`` and
    ``A_t = delta_t + gamma * lambda * A_{t+1}``, run as a reverse scan over T
    that is vectorised over the batch. The value after a row's last real token
    is 0: a response is a terminated episode, so nothing is bootstrapped.

    Padded positions are skipped by the scan (they neither read nor overwrite
    the carried state), so right-padding -- and any mask whose real tokens
    are in order -- is handled; garbage (inf/nan) there is never read.

    Shapes:
        rewards, values, mask: (B, T).
        returns: (advantages, returns), each (B, T), 0 at padded positions;
        ``returns = advantages + values`` on real tokens.
    """
    m = as_bool_mask(mask)
    zeros = torch.zeros_like(values)
    r = torch.where(m, rewards, zeros)
    v = torch.where(m, values, zeros)

    next_value = zeros[:, 0]  # V after the final real token: terminal, so 0
    last_gae = zeros[:, 0]
    steps = []
    for t in reversed(range(r.shape[1])):
        delta = r[:, t] + gamma * next_value - v[:, t]
        gae_t = delta + gamma * gae_lambda * last_gae
        real = m[:, t]
        # Carry state through padding unchanged so holes/right-padding are inert.
        last_gae = torch.where(real, gae_t, last_gae)
        next_value = torch.where(real, v[:, t], next_value)
        steps.append(torch.where(real, gae_t, zeros[:, t]))
    advantages = torch.stack(steps[::-1], dim=1)
    returns = torch.where(m, advantages + v, zeros)
    return advantages, returns


def group_advantages(
    scores: torch.Tensor, group_size: int, kind: str, eps: float = 1e-6, valid: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """Critic-free sequence advantages from a group of samples per prompt.

    ``scores`` holds ``n_prompts * group_size`` entries with each prompt's
    samples contiguous.

    - ``"grpo"`` (Shao et al. 2024, DeepSeekMath): ``(s - mean) / (std + eps)``
      per group, with the *unbiased* std (``torch.std`` default, divisor
      G - 1); so it also needs ``group_size >= 2``.
    - ``"rloo"`` (Ahmadian et al. 2024): ``s - mean(other G - 1 samples)``,
      a leave-one-out baseline; needs ``group_size >= 2``.

    ``valid`` marks the samples that count (e.g. ones some reward source scored): baselines are
    taken over a group's valid samples only, and a sample that is not valid, or whose group has
    fewer than 2 valid ones, gets advantage 0.

    Raises ``ValueError`` for an unknown kind, a size that does not divide B,
    or a group too small for the kind.

    Shapes:
        scores: (B,) with B = n_prompts * group_size; valid: (B,) bool or None (all valid).
        returns: (B,); the caller broadcasts over response tokens.
    """
    if kind not in _GROUP_KINDS:
        raise ValueError(f"unknown group advantage kind {kind!r}; valid kinds: {_GROUP_KINDS}")
    if scores.dim() != 1:
        raise ValueError(f"scores must be 1-D (B,), got shape {tuple(scores.shape)}")
    if group_size < 1 or scores.shape[0] % group_size != 0:
        raise ValueError(f"group_size={group_size} must be >= 1 and divide batch size {scores.shape[0]}")
    if group_size < 2:
        raise ValueError(f"{kind} needs group_size >= 2, got {group_size}")

    groups = scores.reshape(-1, group_size)
    if valid is not None and not bool(valid.all()):
        return _masked_group_advantages(groups, valid.reshape(-1, group_size), kind, eps).reshape(-1)
    if kind == "grpo":
        mean = groups.mean(dim=1, keepdim=True)
        std = groups.std(dim=1, keepdim=True)  # unbiased (divisor G - 1)
        adv = (groups - mean) / (std + eps)
    else:
        others_mean = (groups.sum(dim=1, keepdim=True) - groups) / (group_size - 1)
        adv = groups - others_mean
    return adv.reshape(-1)


def _masked_group_advantages(groups: torch.Tensor, valid: torch.Tensor, kind: str, eps: float) -> torch.Tensor:
    """group_advantages over each group's valid members. Shapes: groups, valid: (n_prompts, G)."""
    v = valid.to(groups.dtype)
    n = v.sum(dim=1, keepdim=True)
    total = (groups * v).sum(dim=1, keepdim=True)
    if kind == "grpo":
        mean = total / n.clamp(min=1)
        var = (((groups - mean) * v) ** 2).sum(dim=1, keepdim=True) / (n - 1).clamp(min=1)
        adv = (groups - mean) / (var.sqrt() + eps)
    else:
        adv = groups - (total - groups) / (n - 1).clamp(min=1)
    return torch.where(valid & (n >= 2), adv, torch.zeros_like(adv))
