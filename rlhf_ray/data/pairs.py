"""Preference pairs for the pairwise reward model (reward.objective=pairwise): rows of `prompt`
(optional), `chosen` and `rejected` text, TRL's column names, from a user's .jsonl/.json/.parquet/
.csv/.tsv file or `datasets` directory, or the embedded `imdb-pairs` set built from the IMDB reviews.

The reward model reads prompt + chosen and prompt + rejected, joined as they are (no separator
added): exactly what a reward scorer feeds it under reward.input=prompt_response (prompt + response),
so a prompt ending in a space or a newline keeps it. A row whose chosen equals its rejected teaches
nothing (its loss gradient is 0): it is skipped and counted, not refused."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import pyarrow as pa

from rlhf_ray.data.prompts import load_text_dataset
from rlhf_ray.data.tables import TEST_PERCENT, is_heldout, read_table, split_key
from rlhf_ray.errors import UserError
from rlhf_ray.store import seeds
from rlhf_ray.store.refs import IMDB_PAIRS

log = logging.getLogger(__name__)

COLUMNS = ("prompt", "chosen", "rejected")


@dataclass(frozen=True)
class Pairs:
    prompts: list[str]
    chosen: list[str]
    rejected: list[str]

    def __len__(self) -> int:
        return len(self.chosen)

    def pick(self, rows: list[int]) -> Pairs:
        return Pairs([self.prompts[i] for i in rows], [self.chosen[i] for i in rows], [self.rejected[i] for i in rows])

    def texts(self) -> tuple[list[str], list[str]]:
        """(prompt + chosen, prompt + rejected) per pair: what the reward model scores."""
        return [p + c for p, c in zip(self.prompts, self.chosen)], [p + r for p, r in zip(self.prompts, self.rejected)]


@dataclass(frozen=True)
class PairSplits:
    train: Pairs
    heldout: Pairs
    skipped: int  # rows of the whole set (both splits) dropped because chosen equals rejected


def load_pairs(ref: str, train_size: int, eval_size: int, seed: int) -> PairSplits:
    """Up to `train_size` training and `eval_size` held-out pairs of `ref`, each a seeded sample of its split.

    Splits: imdb-pairs pairs IMDB's train reviews for training and its held-out reviews (the split
    PPO's eval uses) for evaluation; a user's file holds out ~10% of rows by a stable hash of the
    whole row (prompt, chosen, rejected), so the splits do not move when rows are reordered or added."""
    if ref == IMDB_PAIRS:
        train, heldout = imdb_pairs("train"), imdb_pairs("test")
    else:
        train, heldout = _split(file_pairs(ref))
    (train, dropped_train), (heldout, dropped_heldout) = _distinct(train), _distinct(heldout)
    skipped = dropped_train + dropped_heldout
    if skipped:
        log.warning("reward.dataset %s: skipped %d pair(s) whose chosen equals their rejected", ref, skipped)
    total = len(train) + len(heldout) + skipped
    if not train:
        raise UserError(
            f"reward.dataset {ref}: no training pairs left ({total} row(s), {skipped} skipped because chosen "
            "equals rejected, the rest held out): add rows whose chosen and rejected differ"
        )
    if not heldout:
        raise UserError(
            f"reward.dataset {ref}: none of its {len(train)} usable pair(s) falls in the held-out split (a stable "
            f"hash of each row holds out ~{TEST_PERCENT}%): add rows (a few dozen at least)"
        )
    return PairSplits(
        train.pick(seeds.permutation(len(train), seed)[:train_size]),
        heldout.pick(seeds.permutation(len(heldout), seed)[:eval_size]),
        skipped,
    )


def imdb_pairs(split: str) -> Pairs:
    """A positive review (chosen) against a negative one (rejected) of about the same length, with an
    empty prompt: the reviews of each label sorted by length and matched rank by rank, so length
    alone cannot tell chosen from rejected. Deterministic: no seed, the same pairs on every machine."""
    table = load_text_dataset("imdb", split)
    texts, labels = table["text"].to_pylist(), table["label"].to_pylist()
    positive = sorted((t for t, label in zip(texts, labels) if label == 1), key=lambda t: (len(t), t))
    negative = sorted((t for t, label in zip(texts, labels) if label == 0), key=lambda t: (len(t), t))
    n = min(len(positive), len(negative))
    # Equal quantiles when the labels are unbalanced: the i-th of n pairs takes each list's i/n point.
    chosen = [positive[i * len(positive) // n] for i in range(n)]
    rejected = [negative[i * len(negative) // n] for i in range(n)]
    return Pairs([""] * n, chosen, rejected)


def file_pairs(ref: str) -> Pairs:
    """Every row of a user's pair set, in file order (no split, nothing skipped yet)."""
    table = read_table(ref, COLUMNS)
    missing = [c for c in COLUMNS[1:] if c not in table.column_names]
    if missing:
        raise UserError(
            f"reward.dataset {ref} has no {' or '.join(repr(c) for c in missing)} column (columns: "
            f"{', '.join(table.column_names) or 'none'}): a pair set needs text columns chosen and rejected "
            "(and optionally prompt), TRL's names"
        )
    present = [c for c in COLUMNS if c in table.column_names]
    for name in present:
        _check_text(table, ref, name)
    prompts = _texts(table, "prompt") if "prompt" in present else [""] * table.num_rows
    return Pairs(prompts, _texts(table, "chosen"), _texts(table, "rejected"))


def _check_text(table: pa.Table, ref: str, name: str) -> None:
    kind = table.schema.field(name).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_null(kind)):
        raise UserError(
            f"reward.dataset {ref}: column {name!r} holds {kind} values, not text: give prompt, chosen and "
            "rejected as strings (message lists: render them with the chat template first)"
        )


def _texts(table: pa.Table, name: str) -> list[str]:
    return [value or "" for value in table[name].to_pylist()]


def _split(pairs: Pairs) -> tuple[Pairs, Pairs]:
    held = [is_heldout(split_key(list(row))) for row in zip(pairs.prompts, pairs.chosen, pairs.rejected)]
    return pairs.pick([i for i, h in enumerate(held) if not h]), pairs.pick([i for i, h in enumerate(held) if h])


def _distinct(pairs: Pairs) -> tuple[Pairs, int]:
    """The pairs whose chosen differs from their rejected, and how many did not."""
    keep = [i for i, (c, r) in enumerate(zip(pairs.chosen, pairs.rejected)) if c != r]
    return pairs.pick(keep), len(pairs) - len(keep)
