"""The environment protocol: what a user's environment provides, and how its answers are read.

An environment is made fresh for each episode by `env.factory` (a class or function, no arguments):

    reset(seed=None, **row) -> the first observation, or None      (row: the dataset row's columns)
    step(action: str)       -> (observation, reward, done)          (or a mapping with those keys)
    get_reward()            -> float | None                         (optional: the episode's reward)

An observation is a string (one message of role `user`), a {"role", "content"} message, or a list
of them. `reward` may be None; the episode's reward is get_reward() if the env has it, else the sum
of the step rewards given (None if none was). Any method may be `async def`. reset gets only the
keyword arguments its signature accepts (all of them with **kwargs). The names follow OpenEnv's
`reset`/`step` and TRL's `environment_factory`, so an environment written for either moves over
with little change."""

from __future__ import annotations

import asyncio
import inspect
from dataclasses import dataclass
from typing import Any, Callable

from rlhf_ray.errors import UserError


@dataclass
class StepResult:
    messages: list[dict]  # the observation as chat messages (empty: nothing to say)
    reward: float | None
    done: bool


class EnvError(Exception):
    """An environment (or a tool environment's machinery) failed: the episode ends with `env_error`."""


class StepTimeout(Exception):
    """A reset or step ran past env.step_timeout_s: the episode ends with `timeout`."""


def resolve(value: Any) -> Any:
    """A sync result as is; an awaitable run to completion on a loop of this (worker) thread."""
    if inspect.isawaitable(value):
        return asyncio.run(_wait(value))
    return value


async def _wait(awaitable):
    return await awaitable


def as_messages(observation: Any, role: str = "user") -> list[dict]:
    """An observation as chat messages. Raises EnvError for anything that is not text or messages."""
    if observation is None:
        return []
    if isinstance(observation, str):
        return [{"role": role, "content": observation}]
    if isinstance(observation, dict) and "content" in observation:
        return [{"role": str(observation.get("role", role)), "content": str(observation["content"])}]
    if isinstance(observation, (list, tuple)):
        return [m for item in observation for m in as_messages(item, role)]
    raise EnvError(
        f"an observation must be a string, a {{'role', 'content'}} message or a list of them, "
        f"not {type(observation).__name__}"
    )


def as_step(result: Any) -> StepResult:
    """What step() returned, read leniently: (observation, reward, done[, info]), a mapping with
    observation/reward/done, or a bare observation (reward None, not done)."""
    if isinstance(result, StepResult):
        return result
    if isinstance(result, tuple) and len(result) in (3, 4):
        observation, reward, done = result[:3]
    elif isinstance(result, dict) and ("done" in result or "reward" in result):
        observation = result.get("observation", result.get("observations", result.get("messages")))
        reward, done = result.get("reward"), result.get("done", False)
    else:
        observation, reward, done = result, None, False
    if reward is not None and not isinstance(reward, (int, float)):
        raise EnvError(f"step() returned reward {reward!r}: a number or None")
    return StepResult(as_messages(observation), None if reward is None else float(reward), bool(done))


def reset_kwargs(env: Any, seed: int, row: dict) -> dict:
    """seed and the row's columns, as far as reset's signature takes them."""
    try:
        params = inspect.signature(env.reset).parameters
    except (TypeError, ValueError):  # a builtin or C-implemented reset: pass everything
        return {"seed": seed, **row}
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return {"seed": seed, **row}
    return {k: v for k, v in {"seed": seed, **row}.items() if k in params}


def check_factory(make: Callable, key: str) -> None:
    """Refuse at start a factory whose product cannot be an environment (no reset or step)."""
    target = make if inspect.isclass(make) else None
    if target is None:
        return  # a function: its product is checked when the first episode starts
    missing = [name for name in ("reset", "step") if not callable(getattr(target, name, None))]
    if missing:
        raise UserError(
            f"{key}: {target.__name__} has no {' or '.join(missing)} method: an environment needs "
            "reset(seed, **row) and step(action) (README: Bring your own environment)"
        )
