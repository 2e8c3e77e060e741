"""The embedded `arithmetic` dataset: short problems with checkable answers, generated offline and
deterministically (a verifiable task for GRPO, scored by rlhf_ray.rewards.arithmetic:exact_answer).

Named `arithmetic` (the defaults) or `arithmetic:KEY=VALUE,...` with keys
  ops     operators to draw from, any of + - * (default +)
  max     the largest operand: operands are 1..max (default 99)
  n       distinct problems in the dataset, train and held-out together (default 2000, or every
          problem there is when there are fewer)
  heldout percent of the problems held out from PPO for `rlhf-ray eval` (default 10, as for every
          dataset; an easy task has few problems, and more of them are needed for a held-out figure)
  seed    which problems are drawn (default 0; independent of run.seed, so the held-out set is fixed)
  shots   worked exchanges before the question that use the `calculator` tool (default 0): for
          tool environments (configs/calculator.yaml); each shows a call, its result and the answer
e.g. `data.dataset=arithmetic:ops=+-,max=20,n=500`.

Rows: `prompt`, one user message ("What is 17 + 25? Answer with the number only."), and `answer`,
the exact integer result as a decimal string ("42", "-8"; a string as in GSM8K-style datasets, so
every file format keeps it exact). Held-out rows are the `heldout`% picked by the stable hash every
dataset uses (data.tables.is_heldout) on the prompt, so the splits never share a problem text;
a + b and b + a count as one problem (written in one order), so they never share one by
commuting either. A problem's text and split depend only on (op, operands, seed), and the dataset of size n is
the first n rows of any bigger one."""

from __future__ import annotations

import dataclasses
import math
import random
import zlib
from dataclasses import dataclass

import pyarrow as pa

from rlhf_ray.data.tables import TEST_PERCENT, is_heldout, split_key
from rlhf_ray.errors import UserError

NAME = "arithmetic"
OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}
COMMUTATIVE = "+*"
MAX_OPERAND = 999_999
MAX_N = 200_000  # rendering the chat template takes ~0.4 ms a row on a 2-core CPU
INSTRUCTION = "Answer with the number only."


@dataclass(frozen=True)
class ArithmeticSpec:
    ops: str = "+"
    max: int = 99
    n: int = 2000
    heldout: int = TEST_PERCENT
    seed: int = 0
    shots: int = 0

    def problems_of(self, op: str) -> int:
        v = self.max
        return v * (v + 1) // 2 if op in COMMUTATIVE else v * v

    @property
    def distinct(self) -> int:
        return sum(self.problems_of(op) for op in self.ops)


def is_arithmetic(ref: str) -> bool:
    return ref == NAME or ref.startswith(NAME + ":")


def heldout_percent(ref: str) -> int:
    """The share of `ref`'s problems held out (data.prompts splits arithmetic prompts by it)."""
    return parse(ref).heldout


def parse(ref: str) -> ArithmeticSpec:
    """`arithmetic[:k=v,...]` -> spec; UserError naming the dataset and the key for anything off."""
    _, _, params = ref.partition(":")
    fields: dict = {}
    for item in filter(None, (p.strip() for p in params.split(","))):
        key, eq, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not eq or key not in ("ops", "max", "n", "heldout", "seed", "shots"):
            raise UserError(
                f"dataset {ref!r}: {item!r} is not one of ops=, max=, n=, heldout=, seed=, shots= "
                f"(e.g. {NAME}:ops=+-,max=20,heldout=40)"
            )
        if key in fields:
            raise UserError(f"dataset {ref!r}: {key}= is given twice: keep one")
        fields[key] = value if key == "ops" else _integer(ref, key, value)
    spec = ArithmeticSpec(**fields)
    if "n" not in fields and spec.ops and set(spec.ops) <= set(OPS) and spec.max >= 1:
        spec = dataclasses.replace(spec, n=min(spec.n, spec.distinct))
    _check(ref, spec)
    return spec


def _integer(ref: str, key: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise UserError(f"dataset {ref!r}: {key}={value!r} is not a whole number") from None


def _check(ref: str, spec: ArithmeticSpec) -> None:
    bad_ops = sorted(set(spec.ops) - set(OPS))
    if not spec.ops or bad_ops or len(set(spec.ops)) != len(spec.ops):
        raise UserError(f"dataset {ref!r}: ops={spec.ops!r} must list distinct operators among + - * (e.g. ops=+-)")
    if not 1 <= spec.max <= MAX_OPERAND:
        raise UserError(f"dataset {ref!r}: max={spec.max} must be between 1 and {MAX_OPERAND}")
    if not 1 <= spec.heldout <= 90:
        raise UserError(f"dataset {ref!r}: heldout={spec.heldout} must be a percentage between 1 and 90")
    if not 0 <= spec.shots <= len(SHOTS):
        raise UserError(f"dataset {ref!r}: shots={spec.shots} must be between 0 and {len(SHOTS)}")
    if spec.n < 1:
        raise UserError(f"dataset {ref!r}: n={spec.n} yields no problems: set n to at least 1 (e.g. n=2000)")
    if spec.n > MAX_N:
        raise UserError(f"dataset {ref!r}: n={spec.n} is more than {MAX_N} problems: set n <= {MAX_N}")
    if spec.n > spec.distinct:
        raise UserError(
            f"dataset {ref!r}: n={spec.n} is more than the {spec.distinct} distinct problems of ops={spec.ops}, "
            f"max={spec.max}: set n <= {spec.distinct} (or raise max, or add ops)"
        )


def problem(spec: ArithmeticSpec, index: int) -> tuple[int, str, int]:
    """The index-th of the spec's distinct problems as (a, op, b): per operator in `spec.ops` order, an
    unordered operand pair for + and * (its written order fixed by a hash), an ordered one for -."""
    for op in spec.ops:
        count = spec.problems_of(op)
        if index < count:
            break
        index -= count
    if op not in COMMUTATIVE:
        i, j = divmod(index, spec.max)
        return 1 + i, op, 1 + j
    j = (math.isqrt(8 * index + 1) - 1) // 2  # index -> (i <= j) over the triangle of pairs
    i = index - j * (j + 1) // 2
    a, b = 1 + i, 1 + j
    if zlib.crc32(f"{spec.seed}:{op}:{a}:{b}".encode()) % 2:
        a, b = b, a
    return a, op, b


def question(a: int, op: str, b: int) -> str:
    return f"What is {a} {op} {b}? {INSTRUCTION}"


def indices(spec: ArithmeticSpec, count: int):
    """The first `count` problems of the seed's sequence of distinct problems: seeded draws, repeats
    skipped, so the dataset of size n is the first n rows of any bigger one."""
    rng, seen = random.Random(spec.seed), set()
    while len(seen) < count:
        index = rng.randrange(spec.distinct)
        if index not in seen:
            seen.add(index)
            yield index


# Worked exchanges for tool environments (rlhf_ray.envs.tasks:calculator in the text protocol of
# rlhf_ray.envs.tools): a hard product done with a call, its result copied as the answer; then an easy one
# answered without the tool. shots=1 shows the first, shots=2 both.
SHOTS = [(6, "*", 7, False), (12, "*", 34, True)]


def shot(a: int, op: str, b: int, tool: bool) -> list[dict]:
    result, ask = str(OPS[op](a, b)), {"role": "user", "content": question(a, op, b)}
    if not tool:
        return [ask, {"role": "assistant", "content": result}]
    return [
        ask,
        {"role": "assistant", "content": f'<tool_call>calculator(expression="{a} {op} {b}")</tool_call>'},
        {"role": "tool", "content": result},
        {"role": "assistant", "content": result},
    ]


def row(spec: ArithmeticSpec, index: int) -> dict:
    a, op, b = problem(spec, index)
    examples = [m for s in SHOTS[: spec.shots] for m in shot(*s)]
    return {"prompt": [*examples, {"role": "user", "content": question(a, op, b)}], "answer": str(OPS[op](a, b))}


def rows(spec: ArithmeticSpec) -> list[dict]:
    """The dataset's rows, in the seeded order (PPO reshuffles them each epoch)."""
    return [row(spec, index) for index in indices(spec, spec.n)]


def table(ref: str) -> pa.Table:
    """The rows of `ref` as an Arrow table; a size with an empty train or held-out split is refused."""
    spec = parse(ref)
    data = rows(spec)
    held_out = sum(is_heldout(split_key(r["prompt"]), spec.heldout) for r in data)
    if held_out in (0, len(data)):
        empty = "held-out" if held_out == 0 else "train"
        need = _smallest_n(spec)
        fix = f"set n >= {need}" if need else "raise max or add ops (every problem of this kind lands in one split)"
        raise UserError(
            f"dataset {ref!r}: n={spec.n} leaves the {empty} split empty (about {spec.heldout}% of problems are "
            f"held out, by a hash of each): {fix}"
        )
    return pa.Table.from_pylist(data)


def _smallest_n(spec: ArithmeticSpec) -> int | None:
    """The smallest n whose problems fall in both splits, or None if even all of them do not."""
    seen = set()
    for count, index in enumerate(indices(spec, spec.distinct), 1):
        seen.add(is_heldout(split_key(row(spec, index)["prompt"]), spec.heldout))
        if len(seen) == 2:
            return count
    return None
