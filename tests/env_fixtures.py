"""Small environments and tools for the tests (loaded by file path, as a user's file is)."""

from __future__ import annotations

import asyncio


class Countdown:
    """Reset from the seed; each step answers with how many turns are left; done after `turns` steps.
    The reward is the length of the last action modulo 3 (anything that varies between samples)."""

    turns = 2

    def reset(self, seed=None, **row):
        self.left, self.last = self.turns, ""
        return f"start {seed % 7}"

    def step(self, action: str):
        self.left -= 1
        self.last = action
        return f"{self.left} left", None, self.left == 0

    def get_reward(self):
        return float(len(self.last) % 3)


class AsyncCountdown(Countdown):
    async def reset(self, seed=None, **row):
        await asyncio.sleep(0)
        return super().reset(seed, **row)

    async def step(self, action: str):
        await asyncio.sleep(0)
        return super().step(action)


def add(a: int, b: int) -> int:
    """Add two integers.

    Args:
        a: the first
        b: the second
    """
    return a + b


def undocumented(a: int) -> int:
    return a


NotAnEnv = dict  # a class without reset/step


def transcript_turns(prompts, completions, **columns) -> list[float]:
    """A reward function over transcripts: the number of messages in each episode, over 10."""
    assert all(isinstance(c, list) and all("role" in m for m in c) for c in completions), completions
    return [len(c) / 10 for c in completions]
