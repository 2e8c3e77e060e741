"""A reward function for `reward.sources` (kind: function): TRL's signature, one value per sample."""

import re


def exact_answer(prompts, completions, answer, **columns):
    """1.0 when the last number in the completion is the row's `answer` column, else 0.0."""
    rewards = []
    for completion, expected in zip(completions, answer):
        numbers = re.findall(r"-?\d+(?:\.\d+)?", completion.replace(",", ""))
        rewards.append(1.0 if numbers and float(numbers[-1]) == float(expected) else 0.0)
    return rewards
