"""Guess the number (1..16, "Higher."/"Lower." feedback) as an OpenEnv server: the environment of the
README's "Train against an OpenEnv server" and of tests/integration/test_openenv.py.

    pip install 'rlhf-ray[openenv]'
    uvicorn --app-dir examples openenv_guess:app --host 127.0.0.1 --port 8000

GUESS_MAX_SESSIONS (default 64) is the server's max_concurrent_envs: one WebSocket session per episode,
so it must be at least the number of episodes the generators play at once."""

from __future__ import annotations

import os
import random
import re
import uuid
from typing import Any, Optional

from openenv.core.env_server import Action, Environment, Observation, State, create_app

NUMBER = re.compile(r"-?\d+")


class GuessAction(Action):
    guess: str  # the policy's turn as written; its first whole number is the guess


class GuessObservation(Observation):
    feedback: str


class GuessEnv(Environment):
    """Guess the secret in 1..max: a wrong guess is answered "Higher." or "Lower." (reward 0), a right
    one "Correct!" (reward 1, done). No turn limit of its own: the trainer's env.max_turns ends an
    episode. The same game as rlhf_ray.envs.tasks:GuessNumber, served over OpenEnv."""

    SUPPORTS_CONCURRENT_SESSIONS = True  # each session has its own instance and nothing shared

    def __init__(self):
        super().__init__()
        self._state = State(episode_id=None, step_count=0)
        self.target, self.max = 1, 16

    def reset(
        self,
        seed: Optional[int] = None,
        episode_id: Optional[str] = None,
        target: Optional[int] = None,
        max: int = 16,
        **row: Any,
    ) -> GuessObservation:
        """`target` and `max`: the row's columns where it has them (the embedded `guess` dataset has
        `target`, and its prompt states the rules: nothing to add); else the secret comes from the seed
        and the rules are told."""
        self._state = State(episode_id=episode_id or str(uuid.uuid4()), step_count=0)
        self.max = int(max)
        if target is not None:
            self.target = int(target)
            return GuessObservation(feedback="")
        self.target = random.Random(seed).randint(1, self.max)
        return GuessObservation(feedback=f"I picked a whole number from 1 to {self.max}. Reply with one number.")

    def step(self, action: GuessAction, timeout_s: Optional[float] = None, **kwargs: Any) -> GuessObservation:
        self._state.step_count += 1
        found = NUMBER.search(action.guess)
        if found is None:
            return GuessObservation(feedback=f"Reply with one number from 1 to {self.max}.", reward=0.0)
        guess = int(found.group())
        if guess == self.target:
            return GuessObservation(feedback="Correct!", reward=1.0, done=True)
        return GuessObservation(feedback="Higher." if guess < self.target else "Lower.", reward=0.0)

    @property
    def state(self) -> State:
        return self._state


app = create_app(
    GuessEnv,
    GuessAction,
    GuessObservation,
    env_name="guess",
    max_concurrent_envs=int(os.environ.get("GUESS_MAX_SESSIONS", "64")),
)
