"""Multi-turn episodes, batched turn by turn: every live episode's context is sampled in one call
of the generator's decode path, each action goes to its environment, and the observations are
appended as tokens. The response of an episode is its token ids exactly as they were sampled and
rendered, with an action mask (1 = sampled by the policy) and, where the decode path computed them,
the reference's log-probs of the actions.

Limits end an episode with a stop reason: `done` (the environment said so), `max_turns`,
`max_tokens` (the response budget env.max_tokens, actions and observations together), `timeout` (a
reset/step past env.step_timeout_s, abandoned without blocking the others) or `env_error` (the
environment raised; the error is kept for events.jsonl)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F

from rlhf_ray.batch import Episode, Rollout
from rlhf_ray.envs.chat import TurnRenderer
from rlhf_ray.envs.protocol import EnvError, StepTimeout, as_messages, as_step, reset_kwargs, resolve


@dataclass
class Limits:
    max_turns: int
    max_tokens: int  # the whole response: actions and observations
    max_observation_tokens: int
    step_timeout_s: float
    max_new_tokens: int  # one turn


# (contexts, max_new_tokens, turn) -> each row's action ids as sampled (through EOS if one was drawn),
# and the reference policy's log-probs of them (None where the decode path does not compute them)
SampleTurn = Callable[[list[list[int]], int, int], tuple[list[list[int]], list[list[float]] | None]]


def turn_of(rollout: Rollout) -> tuple[list[list[int]], list[list[float]] | None]:
    """A SampleTurn's answer from one sampling call's Rollout: each row's ids through its EOS, and the
    reference's log-probs of them where the decode path computed them."""
    n = rollout.response_mask.sum(1).tolist()
    actions = [rollout.response_ids[i, : n[i]].tolist() for i in range(len(rollout))]
    if rollout.ref_logprobs is None:
        return actions, None
    return actions, [rollout.ref_logprobs[i, : n[i]].tolist() for i in range(len(rollout))]


@dataclass
class State:
    env: Any
    messages: list[dict]  # the whole conversation so far, for rendering the next observation
    prompt_ids: list[int] = field(default_factory=list)
    ids: list[int] = field(default_factory=list)  # the response: actions and observations
    actions: list[int] = field(default_factory=list)  # 1 = sampled by the policy
    ref: list[float] = field(default_factory=list)
    transcript: list[dict] = field(default_factory=list)  # the messages after the prompt
    turns: int = 0
    rewards: list[float] = field(default_factory=list)
    stop: str | None = None
    error: str | None = None

    @property
    def context(self) -> list[int]:
        return self.prompt_ids + self.ids

    def end(self, stop: str, error: BaseException | None = None) -> None:
        self.stop = stop
        if error is not None:
            self.error = f"{type(error).__name__}: {error}"[:500]


def call_all(calls: list[Callable[[], Any]], timeout_s: float) -> list[Any]:
    """Each call in its own daemon thread, at once; its result, or the exception it raised, or
    StepTimeout if it has not returned `timeout_s` after the start. A hung call is abandoned."""
    boxes: list[dict] = [{} for _ in calls]

    def run(fn, box):
        try:
            box["value"] = resolve(fn())
        except BaseException as exc:  # noqa: BLE001 - the environment's error: returned to the caller
            box["error"] = exc

    threads = [threading.Thread(target=run, args=(fn, box), daemon=True) for fn, box in zip(calls, boxes)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout_s
    out = []
    for t, box in zip(threads, boxes):
        t.join(max(0.0, deadline - time.monotonic()))
        if t.is_alive():
            out.append(StepTimeout(f"no answer within env.step_timeout_s={timeout_s:g} s"))
        else:
            out.append(box["error"] if "error" in box else box.get("value"))
    return out


def _failed(state: State, result: Any) -> bool:
    """End the episode if `result` is an error; True if it was."""
    if isinstance(result, StepTimeout):
        state.end("timeout", result)
    elif isinstance(result, BaseException):
        state.end("env_error", result)
    else:
        return False
    return True


def start(
    make_env: Callable[[], Any],
    prompts: list[list[dict]],
    rows: list[dict],
    seeds: list[int],
    renderer: TurnRenderer,
    limits: Limits,
) -> list[State]:
    """One environment per prompt, reset with its row and seed; the first context rendered."""
    states = []
    for messages in prompts:
        try:
            states.append(State(make_env(), list(messages)))
        except Exception as exc:  # noqa: BLE001 - the factory is user code
            state = State(None, list(messages))
            state.end("env_error", exc)
            states.append(state)
    live = [s for s in states if s.stop is None]
    resets = call_all(
        [lambda s=s, r=row, seed=seed: s.env.reset(**reset_kwargs(s.env, seed, r))
         for s, row, seed in zip(states, rows, seeds) if s.stop is None],
        limits.step_timeout_s,
    )  # fmt: skip
    for state, first in zip(live, resets):
        if not _failed(state, first):
            try:
                state.messages += as_messages(first)
            except EnvError as exc:
                state.end("env_error", exc)
    for state in states:
        state.prompt_ids = renderer.prompt_ids(state.messages)
    return states


def play(states: list[State], renderer: TurnRenderer, sample_turn: SampleTurn, limits: Limits, eos_id: int) -> None:
    """Turns until every episode has stopped; then each one's reward."""
    tokenizer = renderer.tokenizer
    for turn in range(limits.max_turns):
        live = [s for s in states if s.stop is None]
        if not live:
            break
        room = [limits.max_tokens - len(s.ids) for s in live]
        actions, refs = sample_turn([s.context for s in live], min(limits.max_new_tokens, max(room)), turn)
        for i, (state, action) in enumerate(zip(live, actions)):
            action = list(action[: room[i]])  # the budget cuts a turn short: what is kept is as sampled
            state.ids += action
            state.actions += [1] * len(action)
            state.ref += list(refs[i][: len(action)]) if refs is not None else [0.0] * len(action)
            state.turns += 1
            text = tokenizer.decode(action, skip_special_tokens=True)  # for the environment only
            state.messages.append({"role": "assistant", "content": text})
            state.transcript.append({"role": "assistant", "content": text})
        results = call_all([lambda s=s: s.env.step(s.transcript[-1]["content"]) for s in live], limits.step_timeout_s)
        for state, result in zip(live, results):
            if _failed(state, result):
                continue
            try:
                step = as_step(result)
            except EnvError as exc:
                state.end("env_error", exc)
                continue
            if step.reward is not None:
                state.rewards.append(step.reward)
            if step.done:
                state.end("done")
            elif state.turns >= limits.max_turns:
                state.end("max_turns")
            else:
                _observe(state, step.messages, renderer, limits, eos_id)
    for state in states:
        if state.stop is None:  # every turn taken (max_turns ends the loop)
            state.end("max_turns")


def _observe(state: State, messages: list[dict], renderer: TurnRenderer, limits: Limits, eos_id: int) -> None:
    """Append an observation's tokens (mask 0), its text cut to env.max_observation_tokens; an
    observation that does not fit the episode's budget ends it with `max_tokens`."""
    messages = _cut(messages, renderer, limits.max_observation_tokens)
    ended_with_eos = bool(state.ids) and state.ids[-1] == eos_id
    ids = renderer.observation_ids(state.messages, ended_with_eos, messages)
    if len(state.ids) + len(ids) >= limits.max_tokens:  # no room left for another action
        state.end("max_tokens")
        return
    state.ids += ids
    state.actions += [0] * len(ids)
    state.ref += [0.0] * len(ids)
    state.messages += messages
    state.transcript += messages


def _cut(messages: list[dict], renderer: TurnRenderer, limit: int) -> list[dict]:
    """The observation's contents cut to `limit` tokens in all (environment text, not sampled ids)."""
    out, left = [], limit
    for m in messages:
        ids = renderer.encode(m["content"])
        out.append({**m, "content": m["content"] if len(ids) <= left else renderer.tokenizer.decode(ids[:left])})
        left = max(0, left - len(ids))
    return out


def finish(states: list[State], timeout_s: float) -> list[Episode]:
    """Each episode's record: get_reward() where the environment has it, else the sum of its step rewards."""
    has = [s.env is not None and callable(getattr(s.env, "get_reward", None)) for s in states]
    asked = call_all([lambda s=s: s.env.get_reward() for s, h in zip(states, has) if h], timeout_s)
    got = iter(asked)
    episodes = []
    for state, h in zip(states, has):
        reward = sum(state.rewards) if state.rewards else None
        if h:
            value = next(got)
            if isinstance(value, BaseException):
                state.end("timeout" if isinstance(value, StepTimeout) else "env_error", value)
            elif value is not None:
                reward = float(value)
        episodes.append(
            Episode(
                state.transcript,
                state.stop,
                state.turns,
                int(getattr(state.env, "tool_calls", 0) or 0),
                reward,
                state.error,
            )
        )
    # each environment's close() (an OpenEnv session ends with its episode), bounded; what it raises is ignored
    call_all([s.env.close for s in states if callable(getattr(s.env, "close", None))], timeout_s)
    return episodes


def transcript_text(messages: list[dict]) -> str:
    """A transcript for people: the policy's turns as written, each observation marked by its role."""
    parts = [m["content"] if m["role"] == "assistant" else f"\n[{m['role']}] {m['content']}\n" for m in messages]
    return "".join(parts).strip()


def to_rollout(
    states: list[State],
    episodes: list[Episode],
    tokenizer,
    *,
    policy_version: int,
    group_size: int,
    temperature: float,
    with_ref: bool,
) -> Rollout:
    """Left-padded prompts, right-padded responses; response_mask covers actions and observations
    (the policy reads both), action_mask the actions alone."""
    pad = tokenizer.pad_token_id
    P = max(len(s.prompt_ids) for s in states)
    R = max(1, max(len(s.ids) for s in states))

    def rows(values, width, fill, left=False, dtype=torch.long):
        t = [torch.tensor(v, dtype=dtype) for v in values]
        return torch.stack([F.pad(x, (width - len(x), 0) if left else (0, width - len(x)), value=fill) for x in t])

    return Rollout(
        prompt_ids=rows([s.prompt_ids for s in states], P, pad, left=True),
        prompt_mask=rows([[1] * len(s.prompt_ids) for s in states], P, 0, left=True),
        response_ids=rows([s.ids for s in states], R, pad),
        response_mask=rows([[1] * len(s.ids) for s in states], R, 0),
        prompts=tokenizer.batch_decode([s.prompt_ids for s in states], skip_special_tokens=False),
        responses=[transcript_text(e.messages) for e in episodes],
        policy_version=policy_version,
        group_size=group_size,
        temperature=temperature,
        ref_logprobs=rows([s.ref for s in states], R, 0.0, dtype=torch.float32) if with_ref else None,
        action_mask=rows([s.actions for s in states], R, 0),
        episodes=episodes,
    )
