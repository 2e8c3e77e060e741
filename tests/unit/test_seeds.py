"""Seed streams: fixed mixes, and no two streams of a run ever share draws."""

from __future__ import annotations

import itertools

import torch

from rlhf_ray.store import seeds

STREAM = 1 << seeds.MIX_BITS


def test_seed_mixes_are_the_pinned_ones():
    # sampling keeps the mix every generation figure was measured with (docs/benchmarks.md)
    assert seeds.sampling(42, 3, 1) == 42 * 1_000_003 + 3 * 1_009 + 1
    assert seeds.eval_sampling(42, 16) == 1 * STREAM + 42 * 1_000_003 + 16
    assert seeds.learner_step(42, 3) == 2 * STREAM + 42 * 7_919 + 3
    assert seeds.prompt_order(42, 2) == 3 * STREAM + 42_002
    assert seeds.prompt_length(42, 5) == 4 * STREAM + 42 * 7_919 + 5


def streams(run_seed: int) -> dict[str, list[int]]:
    """Every seed a run draws from, per stream, over a realistic range: 2,000 iterations on 8
    generators, 20,000 held-out prompts, 100 passes over the prompt set, 100,000 prompt rows."""
    return {
        "sampling": [seeds.sampling(run_seed, it, rank) for it in range(1, 2_001) for rank in range(8)],
        "eval_sampling": [seeds.eval_sampling(run_seed, first) for first in range(20_000)],
        "learner_step": [seeds.learner_step(run_seed, it) for it in range(1, 2_001)],
        "prompt_order": [seeds.prompt_order(run_seed, epoch) for epoch in range(100)],
        "prompt_length": [seeds.prompt_length(run_seed, row) for row in range(100_000)],
    }


def test_streams_never_share_draws():
    """Two seeds give the same draws when torch keeps the same state from them: its CPU generators
    keep the low 32 bits. Within a run, no seed may repeat across or within streams, for any run
    seed (0 is the default)."""
    for run_seed in (0, 1, 42, 535, 2**31 - 1, -7):
        kept = {name: [s % 2**32 for s in values] for name, values in streams(run_seed).items()}
        for name, values in kept.items():
            assert len(set(values)) == len(values), (run_seed, name)
        for (a, va), (b, vb) in itertools.combinations(kept.items(), 2):
            assert not set(va) & set(vb), (run_seed, a, b)


def test_streams_that_once_shared_a_seed_draw_different_numbers():
    # the bare mixes made these equal: the learner's minibatch order drew the prompt cut's numbers
    pairs = [
        (seeds.learner_step(42, 3), seeds.prompt_length(42, 3)),
        (seeds.sampling(0, 1, 0), seeds.eval_sampling(0, 1_009)),
        (seeds.learner_step(0, 7), seeds.prompt_order(0, 7)),
    ]
    for a, b in pairs:
        assert not torch.equal(
            torch.rand(8, generator=torch.Generator().manual_seed(a)),
            torch.rand(8, generator=torch.Generator().manual_seed(b)),
        )


def test_permutations_are_seeded_and_reshuffle_each_pass():
    assert seeds.permutation(10, 3) == seeds.permutation(10, 3)
    assert sorted(seeds.permutation(10, 3)) == list(range(10))
    assert seeds.permutation(10, 3) != seeds.permutation(10, 4)
    first, second = itertools.islice(seeds.permutations(10, 3), 2)
    assert first == seeds.permutation(10, 3)  # the first pass is the one-shot shuffle
    assert first != second and sorted(second) == list(range(10))
