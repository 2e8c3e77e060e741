"""KL penalties against the reference policy and KL-coefficient controllers."""

from __future__ import annotations

from typing import Dict, Tuple, Union

import torch

from .stats import as_bool_mask

__all__ = [
    "KL_KINDS",
    "kl_penalty",
    "shape_rewards",
    "FixedKLController",
    "AdaptiveKLController",
]

KL_KINDS = ("k1", "abs", "mse", "k3")


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-token KL estimate between the policy and the reference policy.

    Kinds (estimators from Schulman 2020, "Approximating KL Divergence"):
    ``"k1"``: ``logp - ref``; ``"abs"``: ``|logp - ref|``;
    ``"mse"``: ``0.5 * (logp - ref)^2`` (k2);
    ``"k3"``: ``exp(ref - logp) - (ref - logp) - 1`` (unbiased, always >= 0).

    Shapes:
        logprobs, ref_logprobs: (B, T) (any matching shapes; elementwise).
        returns: same shape.
    """
    if kind == "k1":
        return logprobs - ref_logprobs
    if kind == "abs":
        return (logprobs - ref_logprobs).abs()
    if kind == "mse":
        return 0.5 * (logprobs - ref_logprobs).square()
    if kind == "k3":
        log_ratio = ref_logprobs - logprobs
        return torch.exp(log_ratio) - log_ratio - 1
    raise ValueError(f"unknown kl kind {kind!r}; valid kinds: {KL_KINDS}")


def shape_rewards(
    scores: torch.Tensor,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    kl_coef: Union[float, torch.Tensor],
    kind: str,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards: KL penalty on every token, sequence score at the end.

    ``reward_t = -kl_coef * kl_t``, plus ``scores[b]`` at row b's last real
    token (Ziegler et al. 2019 / Stiennon et al. 2020 reward shaping). A row
    with no real tokens gets no score. ``kl_coef`` may be a float or a 0-d
    tensor.

    Shapes:
        scores: (B,); logprobs, ref_logprobs, mask: (B, T).
        returns: (rewards, kl), each (B, T), 0 at padded positions.
    """
    m = as_bool_mask(mask)
    zeros = torch.zeros_like(logprobs)
    # Sanitise first so inf/nan padding never reaches exp() in k3.
    lp = torch.where(m, logprobs, zeros)
    ref = torch.where(m, ref_logprobs, zeros)
    kl = torch.where(m, kl_penalty(lp, ref, kind), zeros)
    rewards = -kl_coef * kl

    T = m.shape[1]
    positions = torch.arange(1, T + 1, device=m.device)
    # argmax of (position+1)*mask = last real index; works for any 0/1 mask.
    last_idx = (positions * m).argmax(dim=1)
    is_last = (torch.arange(T, device=m.device) == last_idx[:, None]) & m
    score_tok = torch.where(is_last, scores[:, None].to(rewards.dtype), zeros)
    return torch.where(m, rewards + score_tok, zeros), kl


class FixedKLController:
    """Constant KL coefficient; ``update`` is a no-op.

    Shapes:
        scalars only (python floats).
    """

    def __init__(self, kl_coef: float) -> None:
        self.value = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        """Keep the coefficient fixed (same interface as the adaptive one).

        Shapes:
            current_kl: python float; n_steps: python int.
        """

    def state_dict(self) -> Dict[str, float]:
        """Checkpointable state. Shapes: scalars only."""
        return {"value": self.value}

    def load_state_dict(self, d: Dict[str, float]) -> None:
        """Restore from ``state_dict()``. Shapes: scalars only."""
        self.value = float(d["value"])


class AdaptiveKLController:
    """Adaptive KL coefficient of Ziegler et al. 2019 (arXiv:1909.08593, 2.2).

    ``e = clip(current_kl / target - 1, -0.2, 0.2)``;
    ``value = max(floor, value * (1 + e * n_steps / horizon))``. The clip bounds how fast the
    coefficient moves when the measured KL is far from target.

    ``floor`` (default 0: Ziegler's controller) keeps the coefficient from winding down while KL
    is still rising towards the target from 0, as it does in every run that starts at the reference:
    unfloored, 10 iterations below target shrink it ~100x, and once KL passes the target it takes as
    many iterations to grow back, so KL overshoots (docs/benchmarks.md). With ``floor = init`` the
    coefficient is the initial pull until KL passes the target, more while KL is above it, and back
    to the initial pull as KL returns.

    Shapes:
        scalars only (python floats; the caller converts tensors).
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: float, floor: float = 0.0) -> None:
        if target <= 0 or horizon <= 0:
            raise ValueError(f"target and horizon must be > 0, got {target}, {horizon}")
        if not 0 <= floor <= init_kl_coef:
            raise ValueError(f"floor must lie in [0, init_kl_coef={init_kl_coef}], got {floor}")
        self.value = float(init_kl_coef)
        self.target = float(target)
        self.horizon = float(horizon)
        self.floor = float(floor)

    def update(self, current_kl: float, n_steps: int) -> None:
        """Move ``value`` towards keeping KL at ``target``.

        Shapes:
            current_kl: python float; n_steps: python int.
        """
        proportional_error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value = max(self.floor, self.value * (1.0 + proportional_error * n_steps / self.horizon))

    def state_dict(self) -> Dict[str, float]:
        """Checkpointable state. Shapes: scalars only.

        Only ``value`` is mutable; target/horizon are included for reference
        but ``load_state_dict`` keeps the constructor's (config is the source
        of truth on resume).
        """
        return {"value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, d: Dict[str, float]) -> None:
        """Restore ``value`` from ``state_dict()``. Shapes: scalars only."""
        self.value = float(d["value"])
