"""Every seed the project derives from `run.seed`, in one place.

Each stream of randomness gets its own mix of (run seed, position), so two streams never share
draws and a resumed run reproduces the same numbers. The constants are arbitrary primes; changing
one changes every figure measured with it (docs/benchmarks.md), so they are fixed here for good."""

from __future__ import annotations

from collections.abc import Iterator

import torch


def sampling(run_seed: int, iteration: int, rank: int) -> int:
    """A generator replica's sampling draws for one iteration: reproducible per (run, iteration, shard)."""
    return run_seed * 1_000_003 + iteration * 1_009 + rank


def eval_sampling(run_seed: int, first_prompt: int) -> int:
    """Held-out evaluation draws per prompt batch: the same for the reference and the policy."""
    return run_seed * 1_000_003 + first_prompt


def learner_step(run_seed: int, iteration: int) -> int:
    """The learner's minibatch order in one iteration, reproducible on resume."""
    return run_seed * 7_919 + iteration


def prompt_order(run_seed: int, epoch: int) -> int:
    """The order of the prompt dataset in one pass over it."""
    return run_seed * 1_000 + epoch


def prompt_length(run_seed: int, index: int) -> int:
    """The length of the opening cut from dataset row `index`: a function of (seed, row) only."""
    return run_seed * 7_919 + index


def permutation(n: int, seed: int) -> list[int]:
    """A seeded shuffle of range(n) (torch's CPU generator)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()


def permutations(n: int, seed: int) -> Iterator[list[int]]:
    """Endless seeded shuffles of range(n): one per pass over a training set."""
    gen = torch.Generator().manual_seed(seed)
    while True:
        yield torch.randperm(n, generator=gen).tolist()
