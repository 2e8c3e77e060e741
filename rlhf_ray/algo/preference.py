"""Bradley-Terry preference loss for a scalar reward model (Bradley & Terry 1952; Ouyang et al. 2022,
arXiv:2203.02155 eq. 1): P(chosen beats rejected) = sigmoid(r_chosen - r_rejected)."""

from __future__ import annotations

from typing import Dict, Tuple

import torch
import torch.nn.functional as F

__all__ = ["bradley_terry_loss"]


def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """Mean of ``-logsigmoid(r_chosen - r_rejected)`` over the pairs.

    logsigmoid rather than log(sigmoid()): a large negative margin stays finite.
    Stats (detached 0-d tensors): ``accuracy`` (share of pairs with r_chosen > r_rejected; a tie
    counts as wrong) and ``margin`` (mean r_chosen - r_rejected).

    Shapes:
        chosen, rejected: (B,) scalar rewards of the pair's two texts.
        returns: (loss 0-d, stats).
    """
    margin = chosen.float() - rejected.float()
    loss = -F.logsigmoid(margin).mean()
    stats = {"accuracy": (margin > 0).float().mean().detach(), "margin": margin.mean().detach()}
    return loss, stats
