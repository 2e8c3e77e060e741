"""The embedded `guess` dataset: games of guess-the-number for the multi-turn environment
rlhf_ray.envs.tasks:GuessNumber (configs/guess.yaml).

Named `guess` or `guess:KEY=VALUE,...` with keys
  max   the largest number: the secret is one of 1..max (default 16)
  n     games in the dataset, train and held-out together (default 2000)
  seed  which secrets are drawn (default 0; independent of run.seed, so the held-out set is fixed)
  shots worked games before the new one (default 0; at most 1): how a game goes, turn by turn

Rows: `prompt`, one user message stating the rules (numbered, so that the held-out split, a hash of
the prompt as for every dataset, puts ~10% of the games there), and `target`, the secret."""

from __future__ import annotations

import random

import pyarrow as pa

from rlhf_ray.errors import UserError

NAME = "guess"
RULES = "Game {game}: guess my number from 1 to {max}. Reply with one number; I say higher or lower."


def is_guess(ref: str) -> bool:
    return ref == NAME or ref.startswith(NAME + ":")


def parse(ref: str) -> dict:
    """`guess[:k=v,...]` -> {"max", "n", "seed"}; UserError naming the dataset and the key for anything off."""
    spec = {"max": 16, "n": 2000, "seed": 0, "shots": 0}
    for item in filter(None, (p.strip() for p in ref.partition(":")[2].split(","))):
        key, eq, value = (x.strip() for x in item.partition("="))
        if not eq or key not in spec:
            raise UserError(
                f"dataset {ref!r}: {item!r} is not one of max=, n=, seed=, shots= (e.g. {NAME}:max=16,n=500)"
            )
        try:
            spec[key] = int(value)
        except ValueError:
            raise UserError(f"dataset {ref!r}: {key}={value!r} is not a whole number") from None
    if spec["max"] < 2 or spec["n"] < 20 or spec["shots"] not in (0, 1):
        raise UserError(f"dataset {ref!r}: max must be >= 2, n >= 20 (both splits need games) and shots 0 or 1")
    return spec


def _worked_game(top: int) -> list[dict]:
    """One game played by halving, secret 3/4 of the way up: guesses and the feedback to each."""
    secret, low, high, turns = (3 * top) // 4, 1, top, []
    while True:
        guess = (low + high) // 2
        turns.append({"role": "assistant", "content": str(guess)})
        if guess == secret:
            turns.append({"role": "user", "content": "Correct!"})
            return [{"role": "user", "content": RULES.format(game=0, max=top)}, *turns]
        low, high = (guess + 1, high) if guess < secret else (low, guess - 1)
        turns.append({"role": "user", "content": "Higher." if guess < secret else "Lower."})


def table(ref: str) -> pa.Table:
    spec = parse(ref)
    rng = random.Random(spec["seed"])
    example = _worked_game(spec["max"]) if spec["shots"] else []
    rows = [
        {"prompt": [*example, {"role": "user", "content": RULES.format(game=i + 1, max=spec["max"])}],
         "target": rng.randint(1, spec["max"]), "max": spec["max"]}
        for i in range(spec["n"])
    ]  # fmt: skip
    return pa.Table.from_pylist(rows)
