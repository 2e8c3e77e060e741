"""Reward functions for tasks with a numeric answer (the embedded `arithmetic` dataset, or any dataset
with an `answer` column), for `kind: function` sources:

    reward:
      sources:
        - {kind: function, name: accuracy, function: "rlhf_ray.rewards.arithmetic:exact_answer"}
        - {kind: function, name: format, weight: 0.1, function: "rlhf_ray.rewards.arithmetic:format_reward"}

Both take TRL's signature fn(prompts, completions, **columns) -> list[float | None]; a completion is
the decoded text, or a list of chat messages (TRL's conversational form: the last message's content
is read). `rlhf-ray eval` reports exact_answer's mean as the held-out accuracy."""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Any

EXACT_ANSWER = "rlhf_ray.rewards.arithmetic:exact_answer"

# An integer or decimal, optionally signed, with optional thousands commas ("1,234"): a comma that
# does not group three digits ("3,4") separates two numbers.
NUMBER = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?|-?\d+(?:\.\d+)?")
# The whole completion is one number (a final full stop allowed).
JUST_A_NUMBER = re.compile(r"\s*(?:" + NUMBER.pattern + r")\.?\s*")
# Minus signs a model may write for "-": the Unicode minus and the dashes.
MINUS = str.maketrans({"\u2212": "-", "\u2013": "-", "\u2014": "-"})


def completion_text(completion: Any) -> str:
    if isinstance(completion, list):  # conversational: [..., {"role": "assistant", "content": ...}]
        return str(completion[-1].get("content", "")) if completion else ""
    return str(completion)


def last_number(text: str) -> Decimal | None:
    """The last number written in `text` (commas and a Unicode minus allowed), or None."""
    found = NUMBER.findall(text.translate(MINUS))
    return Decimal(found[-1].replace(",", "")) if found else None


def as_number(answer: Any) -> Decimal | None:
    """A row's answer (a string such as "42" or "-1,024", or a number) as a Decimal; None if it is not one."""
    if answer is None or isinstance(answer, bool):
        return None
    try:
        return Decimal(str(answer).translate(MINUS).replace(",", "").strip())
    except InvalidOperation:
        return None


def exact_answer(prompts: list, completions: list, answer: list, **columns) -> list[float | None]:
    """1.0 where the last number in the completion equals the row's `answer` ("42" == "42.0"), else 0.0;
    None (not applied) for a row whose answer is missing or not a number."""
    out: list[float | None] = []
    for completion, expected in zip(completions, answer):
        target = as_number(expected)
        if target is None:
            out.append(None)
            continue
        got = last_number(completion_text(completion))
        out.append(1.0 if got is not None and got == target else 0.0)
    return out


def format_reward(prompts: list, completions: list, **columns) -> list[float]:
    """1.0 where the completion is one number and nothing else ("42", " -7.\\n"), else 0.0: give it a small
    weight next to exact_answer so that answering tersely is preferred, never more than being right."""
    return [1.0 if JUST_A_NUMBER.fullmatch(completion_text(c).translate(MINUS)) else 0.0 for c in completions]
