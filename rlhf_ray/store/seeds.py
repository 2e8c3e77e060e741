"""Every seed the project derives from `run.seed`, in one place.

Each stream of randomness gets its own mix of (run seed, position), so two streams never share
draws and a resumed run reproduces the same numbers. The CPU generators of torch (the global one
and torch.Generator, both MT19937) keep only the low 32 bits of a seed: the top 3 of those 32 bits
name the stream (sampling is stream 0) and the low 29 carry the mix, so the streams of one run are
disjoint for every run seed and unique within a stream up to 2**29 positions. Before issue 21 the
mixes were bare (learner_step(s, 3) == prompt_length(s, 3), and with the default seed 0 every
stream drew from the same few seeds); sampling's values are unchanged for run seeds below 536, the
other streams' figures changed then. The constants are arbitrary primes, fixed here for good."""

from __future__ import annotations

from collections.abc import Iterator

import torch

MIX_BITS = 29  # 32 bits that torch's CPU generators keep, less 3 for the stream
SAMPLING, EVAL_SAMPLING, LEARNER_STEP, PROMPT_ORDER, PROMPT_LENGTH, EPISODE, TURN = range(7)


def _stream(stream: int, mix: int) -> int:
    return (stream << MIX_BITS) | (mix % (1 << MIX_BITS))


def sampling(run_seed: int, iteration: int, rank: int) -> int:
    """A generator replica's sampling draws for one iteration: reproducible per (run, iteration, shard)."""
    return _stream(SAMPLING, run_seed * 1_000_003 + iteration * 1_009 + rank)


def episode(run_seed: int, iteration: int, prompt: int) -> int:
    """The seed an environment's reset gets: one per prompt of an iteration (`prompt`: its place in the
    batch), so every member of a GRPO/RLOO group starts from the same state, and a resumed run too."""
    return _stream(EPISODE, run_seed * 1_000_003 + iteration * 1_009 + prompt)


def turn_sampling(first: int, turn: int) -> int:
    """Draws of a multi-turn episode's later turns: turn 0 draws from `first` (the call's sampling
    seed), turn t > 0 from its own mix of it."""
    return first if turn == 0 else _stream(TURN, first * 31 + turn)


def eval_sampling(run_seed: int, first_prompt: int) -> int:
    """Held-out evaluation draws per prompt batch: the same for the reference and the policy."""
    return _stream(EVAL_SAMPLING, run_seed * 1_000_003 + first_prompt)


def learner_step(run_seed: int, iteration: int) -> int:
    """The learner's minibatch order in one iteration, reproducible on resume."""
    return _stream(LEARNER_STEP, run_seed * 7_919 + iteration)


def prompt_order(run_seed: int, epoch: int) -> int:
    """The order of the prompt dataset in one pass over it."""
    return _stream(PROMPT_ORDER, run_seed * 1_000 + epoch)


def prompt_length(run_seed: int, index: int) -> int:
    """The length of the opening cut from dataset row `index`: a function of (seed, row) only."""
    return _stream(PROMPT_LENGTH, run_seed * 7_919 + index)


def permutation(n: int, seed: int) -> list[int]:
    """A seeded shuffle of range(n) (torch's CPU generator)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()


def permutations(n: int, seed: int) -> Iterator[list[int]]:
    """Endless seeded shuffles of range(n): one per pass over a training set."""
    gen = torch.Generator().manual_seed(seed)
    while True:
        yield torch.randperm(n, generator=gen).tolist()
