"""Masked statistics over (B, T) response-token tensors.

Every reduction selects real tokens with ``torch.where`` instead of multiplying
by the mask: padding may hold inf/nan, and ``nan * 0`` is still nan.
"""

from __future__ import annotations

from typing import Optional

import torch

__all__ = ["as_bool_mask", "masked_mean", "masked_var", "masked_whiten"]


def as_bool_mask(mask: torch.Tensor) -> torch.Tensor:
    """Return ``mask`` as a bool tensor (callers pass float 0/1 or bool masks).

    Shapes:
        mask: any shape -> same shape, dtype bool.
    """
    return mask if mask.dtype == torch.bool else mask != 0


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: Optional[int] = None) -> torch.Tensor:
    """Mean of ``x`` over entries where ``mask`` is set.

    With ``dim=None`` the mean is over every selected entry; otherwise it is
    taken along ``dim``. A reduction with no selected entries returns 0 rather
    than nan, so a fully padded row cannot poison a loss.

    Shapes:
        x, mask: (B, T) (any matching shapes work).
        returns: 0-d if ``dim`` is None, else ``x`` with ``dim`` reduced.
    """
    m = as_bool_mask(mask)
    total = torch.where(m, x, torch.zeros_like(x))
    if dim is None:
        return total.sum() / m.sum().clamp(min=1).to(x.dtype)
    return total.sum(dim) / m.sum(dim).clamp(min=1).to(x.dtype)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of ``x`` over all entries where ``mask`` is set.

    ``unbiased=True`` applies Bessel's correction n / (n - 1) and raises
    ``ValueError`` when fewer than 2 entries are selected (the estimate is
    undefined there). That check needs the count on the host, which is the
    only device sync in this module.

    Shapes:
        x, mask: (B, T) (any matching shapes work).
        returns: 0-d.
    """
    m = as_bool_mask(mask)
    mean = masked_mean(x, m)
    centered = torch.where(m, x - mean, torch.zeros_like(x))
    var = masked_mean(centered * centered, m)
    if unbiased:
        n = m.sum()
        if bool(n < 2):
            raise ValueError(f"masked_var(unbiased=True) needs at least 2 masked entries, got {int(n)}")
        n = n.to(x.dtype)
        var = var * n / (n - 1)
    return var


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """Normalise ``x`` to zero mean / unit variance using masked statistics.

    Computes ``(x - mean) / sqrt(var + 1e-8)`` with the unbiased masked
    variance (the TRL ``masked_whiten`` convention, so at least 2 real tokens
    are required). With ``shift_mean=False`` the mean is added back, i.e. only
    the scale changes. Padded positions of the output are 0.

    Shapes:
        x, mask: (B, T) (any matching shapes work).
        returns: same shape as ``x``.
    """
    m = as_bool_mask(mask)
    mean = masked_mean(x, m)
    var = masked_var(x, m, unbiased=True)
    safe_x = torch.where(m, x, mean)
    whitened = (safe_x - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(m, whitened, torch.zeros_like(whitened))
