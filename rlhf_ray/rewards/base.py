"""What every reward source reads (RewardBatch) and how its answer is checked: one value per
sample, a number or None (the source does not apply to that sample)."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Any

import torch

from rlhf_ray.batch import Rollout
from rlhf_ray.errors import NonFiniteError, UserError


class RewardSourceError(UserError):
    """A reward source failed at run time in a way a retry cannot fix (its function raised or
    returned the wrong thing, its service refused the request or stayed down): the run stops with
    one line naming the source and the first offending row; the supervisor never restarts for it."""


@dataclass
class RewardBatch:
    """The samples a source scores, row-aligned."""

    prompts: list[Any]  # the dataset's prompts as given: str, or a list of {"role", "content"} messages
    completions: list[str]  # the decoded responses
    columns: dict[str, list[Any]] = field(default_factory=dict)  # the rows' other dataset columns
    texts: list[str] | None = None  # the prompts as the policy read them (chat template applied); None: prompts
    # multi-turn runs: each episode's reward from its environment (None where it gave none); None: single-turn
    env_rewards: list[float | None] | None = None

    def __post_init__(self):
        if self.texts is None:
            self.texts = [prompt_text(p) for p in self.prompts]

    @staticmethod
    def of(rollout: Rollout) -> "RewardBatch":
        """A multi-turn episode's completion is its transcript: the turns after the prompt as chat
        messages (TRL's conversational form; the policy's last turn is the last message)."""
        prompts = rollout.raw_prompts if rollout.raw_prompts is not None else rollout.prompts
        if rollout.episodes is None:
            return RewardBatch(list(prompts), list(rollout.responses), dict(rollout.columns), list(rollout.prompts))
        completions = [e.messages for e in rollout.episodes]
        rewards = [e.reward for e in rollout.episodes]
        return RewardBatch(list(prompts), completions, dict(rollout.columns), list(rollout.prompts), rewards)

    def __len__(self) -> int:
        return len(self.completions)

    @property
    def completion_texts(self) -> list[str]:
        """The completions as text (a transcript's messages one per line), for scorers that read text."""
        return [prompt_text(c) for c in self.completions]

    def row(self, i: int) -> "RewardBatch":
        env = None if self.env_rewards is None else [self.env_rewards[i]]
        return RewardBatch(
            [self.prompts[i]], [self.completions[i]], {k: [v[i]] for k, v in self.columns.items()}, [self.texts[i]], env
        )

    def describe(self, i: int) -> str:
        """A row as a user finds it again: its index in the batch and the start of its texts."""
        return f"row {i} (prompt {_short(self.texts[i])!r}, completion {_short(self.completions[i])!r})"


def prompt_text(prompt: Any) -> str:
    """A prompt as plain text: a string as is, a list of chat messages as their contents, one per line."""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list):
        return "\n".join(str(m.get("content", "")) if isinstance(m, dict) else str(m) for m in prompt)
    return str(prompt)


def _short(text: str, limit: int = 40) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def to_values(name: str, values: Any, batch: RewardBatch) -> torch.Tensor:
    """A source's answer as (B,) float32 with NaN where it returned None. Wrong length or a
    non-number: RewardSourceError; NaN/inf: NonFiniteError (ppo.on_nonfinite decides)."""
    if isinstance(values, torch.Tensor) or hasattr(values, "tolist"):  # numpy arrays too
        values = values.tolist()
    if not isinstance(values, (list, tuple)):
        raise RewardSourceError(
            f"reward source {name!r} returned {type(values).__name__}, not a list: "
            f"return one float (or None) per completion, {len(batch)} here"
        )
    if len(values) != len(batch):
        raise RewardSourceError(
            f"reward source {name!r} returned {len(values)} values for {len(batch)} completions: "
            "return one float (or None) per completion, in order"
        )
    out = []
    for i, value in enumerate(values):
        if value is None:
            out.append(math.nan)
            continue
        if not isinstance(value, numbers.Real) or isinstance(value, bool):
            raise RewardSourceError(
                f"reward source {name!r} returned {value!r} ({type(value).__name__}) for {batch.describe(i)}: "
                "return a float, or None where the source does not apply"
            )
        if not math.isfinite(value):
            raise NonFiniteError(
                f"reward source {name!r} returned {value} for {batch.describe(i)}: return a finite float, "
                "or None where the source does not apply"
            )
        out.append(float(value))
    return torch.tensor(out, dtype=torch.float32)
