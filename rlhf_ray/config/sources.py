"""One entry of reward.sources (where a reward comes from) or of eval.judges (a scorer eval reports beside
it, never trained against); rlhf_ray.rewards builds both."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit


@dataclass
class RewardSourceConfig:
    """One entry of reward.sources or eval.judges (a mapping in the YAML list)."""

    # classifier: the sentiment classifier (as reward.model); model: a reward model with one output (e.g. trained
    # on preference pairs); function: a Python function; http: a reward service (e.g. `rlhf-ray serve-reward`);
    # env: the environment's episode reward (multi-turn runs: env.*).
    kind: Literal["classifier", "model", "function", "http", "env"] = "classifier"
    # Name in the metrics (reward/<name>/mean; a judge's judge/<name>/...) and samples; None -> classifier,
    # model:<dir>, fn:<function>, http:<host:port>. Names must be unique.
    name: str | None = None
    # This source's factor in the combined reward: sum of weight x value over the sources that returned a value.
    weight: float = 1.0
    # classifier: its directory (None -> reward.model, else the reward stage's output); model: a local
    # directory, embedded asset or hub id of a sequence-classification model with num_labels 1 (None under
    # reward.objective=pairwise -> reward.model, else the reward stage's output). A judge always names its own.
    model: str | None = None
    # function: "path/to/file.py:name" (the file travels to the scorers) or "package.module:name" (importable on
    # every node); called as fn(prompts, completions, **columns) -> list[float | None], async def allowed.
    function: str | None = None
    # http: the service's URL; POST {"prompts", "completions", "columns"} -> {"rewards": [float | null, ...]}.
    url: str | None = None
    # http: seconds to wait for one answer.
    timeout_s: float = 60.0
    # http: tries after the first on a 5xx answer, a timeout or a refused connection (waits 0.5 s, doubling).
    retries: int = 3
    # eval.judges only: a value above it counts as positive in the judge's positive rate; None -> the
    # classifier's own cut (reward.score: probability 0.5, its log, or margin 0), else 0.
    threshold: float | None = None

    def resolved_name(self) -> str:
        """`name`, else one derived from the kind and its target."""
        if self.name is not None:
            return self.name
        if self.kind == "model":  # no model: the pairwise reward stage's output
            return f"model:{Path(self.model.rstrip('/')).name}" if self.model else "pairwise"
        if self.kind == "function":
            return f"fn:{str(self.function).rpartition(':')[2]}"
        if self.kind == "http":
            return f"http:{urlsplit(str(self.url)).netloc}"
        if self.kind == "env":
            return "env"
        return "classifier"

    def positive_threshold(self, score: str) -> float:
        """A judge's positive cut: `threshold`, else a classifier's reward.score cut, else 0."""
        if self.threshold is not None:
            return self.threshold
        return score_threshold(score) if self.kind == "classifier" else 0.0


def score_threshold(score: str) -> float:
    """Where a reward.score value calls a text positive: probability 0.5 (prob), its log (log_prob), margin 0."""
    return {"prob": 0.5, "log_prob": math.log(0.5)}.get(score, 0.0)
