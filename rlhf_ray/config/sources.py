"""One entry of reward.sources: where a reward comes from (rlhf_ray.rewards builds it)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit


@dataclass
class RewardSourceConfig:
    """One entry of reward.sources (a mapping in the YAML list)."""

    # classifier: the sentiment classifier (as reward.model); model: a reward model with one output (e.g. trained
    # on preference pairs); function: a Python function; http: a reward service (e.g. `rlhf-ray serve-reward`).
    kind: Literal["classifier", "model", "function", "http"] = "classifier"
    # Name in the metrics (reward/<name>/mean) and samples; None -> classifier, model:<dir>, fn:<function>,
    # http:<host:port>. Names must be unique.
    name: str | None = None
    # This source's factor in the combined reward: sum of weight x value over the sources that returned a value.
    weight: float = 1.0
    # classifier: its directory (None -> reward.model, else the reward stage's output); model: a local
    # directory, embedded asset or hub id of a sequence-classification model with num_labels 1 (None under
    # reward.objective=pairwise -> reward.model, else the reward stage's output).
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
        return "classifier"
