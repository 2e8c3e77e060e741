"""Thread count for torch in a role process. Ray-free, so role classes also run on hosts without Ray."""

from __future__ import annotations

import os


def set_torch_threads(requested: int) -> int:
    """0 = all cores: PPO phases run one after another, so only one role computes at a time."""
    import torch

    threads = requested or os.cpu_count() or 1
    torch.set_num_threads(threads)
    return threads
