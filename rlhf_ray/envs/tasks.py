"""The embedded multi-turn tasks: a calculator tool (configs/calculator.yaml, with the
`arithmetic:ops=*,...,shots=1` dataset) and guess-the-number (configs/guess.yaml, with the `guess`
dataset). Named in configs as `rlhf_ray.envs.tasks:calculator` and `rlhf_ray.envs.tasks:GuessNumber`,
importable on every node, as a user's own `package.module:Name` would be."""

from __future__ import annotations

import ast
import operator
import re

_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
        ast.USub: operator.neg, ast.UAdd: operator.pos}  # fmt: skip
NUMBER = re.compile(r"-?\d+")


def calculator(expression: str) -> str:
    """Compute an arithmetic expression exactly, e.g. 123 * 45.

    Args:
        expression: numbers with + - * / and parentheses
    """
    value = _evaluate(ast.parse(expression.strip(), mode="eval").body)
    return str(int(value)) if float(value).is_integer() else f"{value:.6g}"


def _evaluate(node):
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Mult) and abs(left) * abs(right) > 1e30:
            raise ValueError("the result is too large")
        return _OPS[type(node.op)](left, right)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_evaluate(node.operand))
    raise ValueError("only numbers, + - * / and parentheses")


class GuessNumber:
    """Guess the secret in 1..max: each wrong guess is answered "Higher." or "Lower."; the episode
    ends when the guess is right or the turns run out. The secret is the row's `target` (the `guess`
    dataset), else drawn from the seed: a GRPO group shares one secret.

    Reward: 1 for a solved game; an unsolved one earns 0.5 x the share of its turns whose guess was
    still possible (inside the range the feedback so far leaves). A 135M model starts out repeating
    guesses and stepping outside the range (docs/benchmarks.md): with a 0/1 reward most GRPO groups
    of 4 hold no win and teach nothing; the partial credit ranks every group's episodes by how well
    they use the feedback, which is what wins. Success is the `done` stop reason (env/stop/done)."""

    def reset(self, seed: int | None = None, target: int | None = None, max: int = 16, **row) -> None:
        self.max = int(max)
        self.target = int(target) if target is not None else (seed or 0) % self.max + 1
        self.low, self.high = 1, self.max  # what the feedback so far leaves possible
        self.turns = self.possible = 0
        self.solved = False
        return None  # the prompt states the rules

    def step(self, action: str):
        self.turns += 1
        found = NUMBER.findall(action)
        if not found:
            return f"Reply with one number from 1 to {self.max}.", None, False
        guess = int(found[0])
        self.possible += self.low <= guess <= self.high
        if guess == self.target:
            self.solved = True
            return "Correct!", None, True
        if guess < self.target:
            self.low = max(self.low, guess + 1)
            return "Higher.", None, False
        self.high = min(self.high, guess - 1)
        return "Lower.", None, False

    def get_reward(self) -> float:
        if self.solved:
            return 1.0
        return 0.5 * self.possible / self.turns if self.turns else 0.0
