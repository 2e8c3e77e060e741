"""Glue between the policy's text and examples/openenv_guess.py's types (env.glue: examples/openenv_guess_glue.py).

This server needs none (its action has one text field, its observation one text field: the defaults
read both); the glue shows the two hooks. The file travels to the generators as text, so it imports
nothing of the server: with openenv's generic client an action is a dict and an observation a dict."""


def action(text: str) -> dict:
    """The policy's turn -> the env's action: only the turn's first line is the guess."""
    lines = text.strip().splitlines()
    return {"guess": lines[0] if lines else ""}


def observation(obs: dict) -> str:
    """The env's observation -> the next user message."""
    return obs["feedback"]
