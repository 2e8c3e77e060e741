"""Payloads that cross the Ray object store. Tensors are CPU tensors; shapes in comments.

Sequence layout everywhere: [left-padded prompt (P) | right-padded response (R)]. In a multi-turn
episode the response is the policy's turns and the environment's observations interleaved, token ids
exactly as sampled; `action_mask` tells them apart (only actions are scored and credited)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F

# Why an episode ended: the env said done, the turn or token limit, a step past env.step_timeout_s, or
# the environment raised.
STOP_REASONS = ("done", "max_turns", "max_tokens", "timeout", "env_error")


@dataclass
class Episode:
    """How one multi-turn episode went (generator -> scorer, driver, samples; small)."""

    messages: list[dict]  # the turns after the prompt as chat messages: assistant, then tool/user observations
    stop: str  # done | max_turns | max_tokens | timeout | env_error
    turns: int  # policy turns taken
    tool_calls: int = 0  # tool calls parsed from the policy's turns (tool environments)
    reward: float | None = None  # the environment's episode reward (get_reward(), else the sum of step rewards)
    error: str | None = None  # env_error / timeout: what happened, for events.jsonl


@dataclass
class Rollout:
    """What a Generator produced from one shard of prompts."""

    prompt_ids: torch.Tensor  # (B, P) int64, left-padded
    prompt_mask: torch.Tensor  # (B, P) 1 = real prompt token
    response_ids: torch.Tensor  # (B, R) int64, right-padded
    response_mask: torch.Tensor  # (B, R) 1 = real response token (up to and including EOS)
    prompts: list[str]  # B decoded prompts
    responses: list[str]  # B decoded responses (special tokens stripped)
    policy_version: int  # adapter version these samples were drawn from
    group_size: int = 1  # samples per prompt, contiguous rows
    # The sampling temperature the responses were drawn at: the learner scores log-probs under the
    # same distribution (logits / temperature), so its ratio is taken against the sampler's policy.
    temperature: float = 1.0
    # (B, R) the reference policy's log-probs of the response tokens (0 at padding), when the generator
    # computed them while sampling (generate.reference_logprobs); None: the learner computes them
    ref_logprobs: torch.Tensor | None = None
    # The dataset rows behind the samples (row-aligned, a prompt's row repeated for each of its group):
    # the prompt as given (a string, or a list of {"role", "content"} messages) before any chat
    # template, and every other column of the row (e.g. {"answer": [...]}) for reward functions.
    raw_prompts: list[Any] | None = None  # B items; None: the prompts are plain strings (`prompts`)
    columns: dict[str, list[Any]] = field(default_factory=dict)  # column -> B values
    # (B, R) 1 = a token the policy sampled (an action), 0 = an observation or padding; None: every real
    # response token is an action (single-turn). The loss, KL, advantages and lengths count actions only.
    action_mask: torch.Tensor | None = None
    episodes: list[Episode] | None = None  # B multi-turn episodes; None: single-turn

    def __len__(self) -> int:
        return self.prompt_ids.shape[0]

    @property
    def input_ids(self) -> torch.Tensor:  # (B, P + R)
        return torch.cat([self.prompt_ids, self.response_ids], dim=1)

    @property
    def attention_mask(self) -> torch.Tensor:  # (B, P + R)
        return torch.cat([self.prompt_mask, self.response_mask], dim=1)

    @property
    def loss_mask(self) -> torch.Tensor:  # (B, R) 1 = a response token the policy sampled
        return self.response_mask if self.action_mask is None else self.response_mask * self.action_mask

    @property
    def lengths(self) -> torch.Tensor:  # (B,) real prompt + response tokens per row
        return self.prompt_mask.sum(1) + self.response_mask.sum(1)

    def trimmed(self) -> "Rollout":
        """The same rows without the pad columns no row needs: prompts are left-padded, responses
        right-padded, so (B, P', R') keeps response column j at j (log-probs still line up)."""
        p = int(self.prompt_mask.sum(1).max()) if len(self) else 0
        r = max(int(self.response_mask.sum(1).max()) if len(self) else 0, 1)  # one column even if all empty
        P = self.prompt_ids.shape[1]
        ref = None if self.ref_logprobs is None else self.ref_logprobs[:, :r]
        return replace(
            self,
            prompt_ids=self.prompt_ids[:, P - p :],
            prompt_mask=self.prompt_mask[:, P - p :],
            response_ids=self.response_ids[:, :r],
            response_mask=self.response_mask[:, :r],
            ref_logprobs=ref,
            action_mask=None if self.action_mask is None else self.action_mask[:, :r],
        )

    def select(self, idx: torch.Tensor) -> "Rollout":
        rows = idx.tolist()
        return Rollout(
            self.prompt_ids[idx],
            self.prompt_mask[idx],
            self.response_ids[idx],
            self.response_mask[idx],
            [self.prompts[i] for i in rows],
            [self.responses[i] for i in rows],
            self.policy_version,
            self.group_size,
            self.temperature,
            None if self.ref_logprobs is None else self.ref_logprobs[idx],
            None if self.raw_prompts is None else [self.raw_prompts[i] for i in rows],
            {k: [v[i] for i in rows] for k, v in self.columns.items()},
            None if self.action_mask is None else self.action_mask[idx],
            None if self.episodes is None else [self.episodes[i] for i in rows],
        )

    @staticmethod
    def concat(parts: list["Rollout"], pad_id: int) -> "Rollout":
        """Join generator shards: prompts re-padded on the left, responses on the right."""
        if len({p.policy_version for p in parts}) != 1:
            raise ValueError(f"rollout shards from different policy versions: {[p.policy_version for p in parts]}")
        if len({p.temperature for p in parts}) != 1:
            raise ValueError(f"rollout shards sampled at different temperatures: {[p.temperature for p in parts]}")
        with_ref = {p.ref_logprobs is not None for p in parts}
        if len(with_ref) != 1:
            raise ValueError("rollout shards disagree on carrying reference log-probs")
        if len({p.episodes is None for p in parts}) != 1:
            raise ValueError("rollout shards mix single-turn and multi-turn samples")
        P = max(p.prompt_ids.shape[1] for p in parts)
        R = max(p.response_ids.shape[1] for p in parts)

        def left(x, width, value):
            return F.pad(x, (width - x.shape[1], 0), value=value)

        def right(x, width, value):
            return F.pad(x, (0, width - x.shape[1]), value=value)

        return Rollout(
            prompt_ids=torch.cat([left(p.prompt_ids, P, pad_id) for p in parts]),
            prompt_mask=torch.cat([left(p.prompt_mask, P, 0) for p in parts]),
            response_ids=torch.cat([right(p.response_ids, R, pad_id) for p in parts]),
            response_mask=torch.cat([right(p.response_mask, R, 0) for p in parts]),
            prompts=[s for p in parts for s in p.prompts],
            responses=[s for p in parts for s in p.responses],
            policy_version=parts[0].policy_version,
            group_size=parts[0].group_size,
            temperature=parts[0].temperature,
            ref_logprobs=torch.cat([right(p.ref_logprobs, R, 0.0) for p in parts]) if with_ref == {True} else None,
            raw_prompts=None
            if any(p.raw_prompts is None for p in parts)
            else [r for p in parts for r in p.raw_prompts],
            columns={k: [v for p in parts for v in p.columns[k]] for k in parts[0].columns},
            action_mask=torch.cat([right(p.loss_mask, R, 0) for p in parts]) if parts[0].episodes is not None else None,
            episodes=None if parts[0].episodes is None else [e for p in parts for e in p.episodes],
        )


@dataclass
class Experience:
    """A rollout batch with everything the PPO update needs (learner-local, on the learner's device)."""

    rollout: Rollout
    old_logprobs: torch.Tensor  # (B, R) the sampling adapter's log-probs: the PPO ratio's denominator
    ref_logprobs: torch.Tensor  # (B, R) the reference policy's (adapter off)
    old_values: torch.Tensor | None  # (B, R) the critic's values; None without a critic (grpo/rloo)
    advantages: torch.Tensor  # (B, R) 0 at padding
    returns: torch.Tensor | None  # (B, R) GAE returns; None without a critic
    kl: torch.Tensor  # (B, R) per-token KL estimate against the reference, 0 at padding
    mask: torch.Tensor  # (B, R) float 1 = a response token that counts in the loss


@dataclass
class Prompt:
    """One prompt as the driver sends it to a generator (driver -> generator, small)."""

    text: str  # what the policy reads: the chat template already applied where configured
    raw: Any = None  # the dataset's prompt as given (str or list of messages); None: same as `text`
    columns: dict[str, Any] = field(default_factory=dict)  # the row's other columns


@dataclass
class Scores:
    """What a RewardScorer returns for one rollout shard (scorer -> learner and driver)."""

    rewards: torch.Tensor  # (B,) float32: sum of weight * value over the sources that applied (0 if none did)
    applied: torch.Tensor  # (B,) bool: at least one source returned a value; False rows stay out of the loss
    per_source: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> (B,) float32, NaN = not applied

    def __len__(self) -> int:
        return self.rewards.shape[0]


@dataclass
class GenerationInfo:
    """The small part of a generate() result the driver reads (the Rollout stays in the store)."""

    policy_version: int
    adapter_hash: str
    num_samples: int
    response_length_mean: float
    # Decoded texts, only on iterations whose samples are saved (strings are small; tensors stay put).
    prompts: list[str] | None = None
    responses: list[str] | None = None
    # Multi-turn: each episode that ended with env_error or timeout, as {"stop", "error"} (for events.jsonl).
    env_errors: list[dict] = field(default_factory=list)


@dataclass
class AdapterPayload:
    """Trainable tensors only (LoRA + value head), as safetensors bytes: never pickled code."""

    version: int
    sha256: str  # of `data`; the receiver recomputes it
    data: bytes

    @property
    def nbytes(self) -> int:
        return len(self.data)
