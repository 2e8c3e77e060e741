"""The seed mixes are fixed: every recorded figure (docs/benchmarks.md) was measured with them."""

from __future__ import annotations

import itertools

from rlhf_ray.store import seeds


def test_seed_mixes_are_the_recorded_ones():
    assert seeds.sampling(42, 3, 1) == 42 * 1_000_003 + 3 * 1_009 + 1
    assert seeds.eval_sampling(42, 16) == 42 * 1_000_003 + 16
    assert seeds.learner_step(42, 3) == 42 * 7_919 + 3
    assert seeds.prompt_order(42, 2) == 42_002
    assert seeds.prompt_length(42, 5) == 42 * 7_919 + 5


def test_streams_do_not_share_draws():
    """Different iterations, ranks and streams give different seeds over a realistic range."""
    drawn = {seeds.sampling(7, it, rank) for it in range(200) for rank in range(8)}
    assert len(drawn) == 200 * 8
    assert len({seeds.prompt_order(7, e) for e in range(100)}) == 100


def test_permutations_are_seeded_and_reshuffle_each_pass():
    assert seeds.permutation(10, 3) == seeds.permutation(10, 3)
    assert sorted(seeds.permutation(10, 3)) == list(range(10))
    assert seeds.permutation(10, 3) != seeds.permutation(10, 4)
    first, second = itertools.islice(seeds.permutations(10, 3), 2)
    assert first == seeds.permutation(10, 3)  # the first pass is the one-shot shuffle
    assert first != second and sorted(second) == list(range(10))
