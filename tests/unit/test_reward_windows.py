"""reward.train_window: the classifier's training texts as windows of reviews (rlhf_ray.stages.reward.windows)."""

from __future__ import annotations

import pytest

from rlhf_ray.config.load import load_config
from rlhf_ray.errors import ConfigError
from rlhf_ray.stages.reward import windows


def test_each_text_gives_one_window_of_consecutive_words_seeded():
    texts = [" ".join(f"w{i}" for i in range(50)), "short<br />review", "a b c d e"]
    out = windows(texts, 5, seed=3)
    assert len(out) == 3
    words = out[0].split()
    start = int(words[0][1:])
    assert words == [f"w{i}" for i in range(start, start + 5)] and 0 <= start <= 45
    assert out[1] == "short review"  # shorter than a window: whole, IMDB's line breaks as spaces
    assert out[2] == "a b c d e"  # exactly one window long: start 0 is the only place
    assert windows(texts, 5, seed=3) == out  # seeded
    starts = {windows(texts, 5, seed=s)[0].split()[0] for s in range(20)}
    assert len(starts) > 5  # and spread over the review, not always its opening


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["reward.train_window=0"], "reward.train_window"),
        (["reward.train_window=30", "reward.objective=pairwise"], "reward.train_window"),
    ],
)
def test_bad_windows_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)
