"""Micro-batches by token count (`ppo.micro_batch_tokens`): rows of similar length together, so a
padded micro-batch computes few pad positions, and its share of the mini-batch's tokens weights its
loss, so the gradient is that of one token-weighted mean over the whole mini-batch. Pure torch."""

from __future__ import annotations

from typing import List

import torch

__all__ = ["token_budget_batches"]


def token_budget_batches(rows: torch.Tensor, lengths: torch.Tensor, budget: int) -> List[torch.Tensor]:
    """Split `rows` into micro-batches whose padded size (rows x longest row) stays within `budget`.

    Rows are sorted by length (stable, so ties keep their order) and packed greedily; a row longer
    than the budget alone gets a micro-batch of its own. Every row lands in exactly one part.

    Shapes:
        rows: (N,) int64 row indices; lengths: (B,) int64 padded-free length of every row of the batch.
        returns: list of (n_i,) int64 tensors, sum(n_i) = N, in increasing length order.
    """
    if budget <= 0:
        raise ValueError(f"budget must be > 0, got {budget}")
    order = rows[torch.sort(lengths[rows], stable=True).indices]
    parts: List[List[int]] = []
    longest = 0
    for row in order.tolist():
        length = int(lengths[row])
        if parts and (len(parts[-1]) + 1) * max(longest, length) <= budget:
            parts[-1].append(row)
            longest = max(longest, length)
        else:
            parts.append([row])
            longest = length
    return [torch.tensor(part, dtype=rows.dtype) for part in parts]
