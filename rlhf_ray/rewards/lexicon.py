"""VADER (Hutto & Gilbert 2014): a rule-based sentiment scorer whose lexicon ships inside the
`vaderSentiment` wheel (no download, no model weights), as reward functions for `kind: function`
entries. The default config uses it as an independent judge in `rlhf-ray eval` (eval.judges): it
shares nothing with the training reward (no MiniLM backbone, no IMDB rows), so a policy that learned
what the classifier likes rather than positive words shows up as a gap between the two.

    eval:
      judges:
        - {kind: function, name: vader, function: "rlhf_ray.rewards.lexicon:vader", threshold: 0.05}

Each returns VADER's compound score in [-1, 1] (its authors call >= 0.05 positive, <= -0.05
negative); a text without sentiment words scores 0. Held-out accuracy on IMDB: README and
docs/benchmarks.md (`benchmarks/judge_accuracy.py`)."""

from __future__ import annotations

import functools
from typing import Any

from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from rlhf_ray.rewards.base import prompt_text

VADER = "rlhf_ray.rewards.lexicon:vader"
# VADER's own cut-off for "positive" (compound >= 0.05); eval counts a value above the threshold.
VADER_THRESHOLD = 0.05


@functools.lru_cache(maxsize=1)
def _analyzer() -> SentimentIntensityAnalyzer:
    return SentimentIntensityAnalyzer()  # reads the lexicon files in the wheel once per process


def compound(texts: list[str]) -> list[float]:
    """VADER's compound score of each text, in [-1, 1]."""
    analyzer = _analyzer()
    return [float(analyzer.polarity_scores(str(text))["compound"]) for text in texts]


def _completion_text(completion: Any) -> str:
    if isinstance(completion, list):  # TRL's conversational form: the last message's content
        return str(completion[-1].get("content", "")) if completion else ""
    return str(completion)


def vader(prompts: list[Any], completions: list[Any], **columns) -> list[float]:
    """The compound score of prompt + completion (the whole review, as reward.input=prompt_response
    has the classifier read it); a chat prompt counts as its messages' contents."""
    return compound([prompt_text(p) + _completion_text(c) for p, c in zip(prompts, completions)])


def vader_response(prompts: list[Any], completions: list[Any], **columns) -> list[float]:
    """The compound score of the completion alone."""
    return compound([_completion_text(c) for c in completions])
