"""Text datasets with deterministic splits, the prompts PPO and `eval` draw (review openings of a
text column, or a prompt column used whole, chat template applied), and the prompt stream whose
position is part of the checkpoint.

Which column makes the prompts (documented at data.dataset): the data.prompt_field column whole if
the dataset has it, else openings of the data.text_field column, else an error naming both."""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from typing import Any, Literal

import pyarrow as pa

from rlhf_ray.batch import Prompt
from rlhf_ray.config.schema import Config
from rlhf_ray.data import arithmetic, chat, guess
from rlhf_ray.data.tables import TEST_PERCENT, file_stamp, is_heldout, read_table, split_key
from rlhf_ray.errors import UserError
from rlhf_ray.store import seeds
from rlhf_ray.store.refs import DATASET_ASSETS

log = logging.getLogger(__name__)

Split = Literal["all", "train", "test"]


def clean_text(text: str) -> str:
    # IMDB reviews carry HTML line breaks; the recipe trains on plain text.
    return text.replace("<br /><br />", "\n").replace("<br />", " ").replace("<br/>", " ").strip()


def _in_split(key: str, split: Split, percent: int = TEST_PERCENT) -> bool:
    return split == "all" or is_heldout(key, percent) == (split == "test")


@functools.lru_cache(maxsize=4)
def _table(ref: str, stamp: tuple | None, text_columns: tuple[str, ...]) -> pa.Table:
    """Read once per process: stages read both splits, and the embedded CSV takes seconds to parse.
    `text_columns`: the columns a CSV keeps as text (see tables.read_table). `arithmetic[:...]` and
    `guess[:...]` are generated."""
    if guess.is_guess(ref):
        return guess.table(ref)
    return arithmetic.table(ref) if arithmetic.is_arithmetic(ref) else read_table(ref, text_columns)


def _read(ref: str, stamp: tuple | None, text_columns: tuple[str, ...]) -> pa.Table:
    return _table(ref, stamp, () if ref in DATASET_ASSETS else text_columns)  # one read of the embedded file


def _column(table: pa.Table, name: str) -> list:
    return table[name].to_pylist()


def _check_text_column(table: pa.Table, ref: str, name: str, key: str) -> None:
    kind = table.schema.field(name).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_null(kind)):
        raise UserError(f"dataset {ref}: column '{name}' holds {kind} values, not text: set {key} to a text column")


@functools.lru_cache(maxsize=4)
def _text_rows(
    ref: str, text_field: str, stamp: tuple | None, text_columns: tuple[str, ...]
) -> tuple[tuple, tuple, dict[str, tuple]]:
    """(cleaned texts, held out?, other columns) of every row, cleaned once per process."""
    table = _read(ref, stamp, text_columns)
    if text_field not in table.column_names:
        raise UserError(
            f"dataset {ref} has no column '{text_field}' (columns: {', '.join(table.column_names)}); "
            "set data.text_field / sft.text_field"
        )
    _check_text_column(table, ref, text_field, "data.text_field / sft.text_field")
    texts = tuple(clean_text(t or "") for t in _column(table, text_field))
    others = {name: tuple(_column(table, name)) for name in table.column_names if name != text_field}
    return texts, tuple(is_heldout(t) for t in texts), others


def load_text_dataset(ref: str, split: Split = "all", text_field: str = "text") -> pa.Table:
    """Rows with a cleaned `text` column (and `label` where the source has one), as an Arrow table.

    `train`/`test` are a deterministic 90/10 split by a hash of each text."""
    texts, _, others = _text_rows(ref, text_field, file_stamp(ref), (text_field,))
    keep = _text_keep(texts, split)
    out = {"text": [t for t, k in zip(texts, keep) if k]}
    if "label" in others:
        out["label"] = [lab for lab, k in zip(others["label"], keep) if k]
    if not out["text"]:
        raise UserError(f"dataset {ref} (split {split}) has no rows with text: check the file and data.text_field")
    return pa.table(out)


def _text_keep(texts: tuple, split: Split) -> list[bool]:
    return [bool(t) and _in_split(t, split) for t in texts]


# ----------------------------------------------------------------------------- prompts


@dataclass
class PromptSet:
    """The rows a PromptStream draws from. Openings (`raws` None): `texts` are whole texts cut to a
    random length when drawn. Whole prompts: `texts` are the rendered prompts, `raws` as given."""

    texts: list[str]
    raws: list | None = None
    columns: dict[str, list] = field(default_factory=dict)  # the rows' other columns, row-aligned

    def __len__(self) -> int:
        return len(self.texts)


def prompt_set(cfg: Config, tokenizer, split: Literal["train", "heldout"]) -> PromptSet:
    """PPO's prompts (`train`) or `eval`'s (`heldout`: eval.dataset whole, else data.dataset's held-out rows)."""
    d = cfg.data
    if split == "train":
        ref, part = d.dataset, "train"
    else:
        ref, part = (cfg.eval.dataset, "all") if cfg.eval.dataset is not None else (d.dataset, "test")
    stamp, text_columns = file_stamp(ref), (d.prompt_field, d.text_field)
    columns = _read(ref, stamp, text_columns).column_names
    if d.prompt_field in columns:
        return _whole_prompts(cfg, tokenizer, ref, part)
    if d.text_field in columns:
        if d.chat_template is True:  # openings are text to continue, not messages to answer
            raise UserError(
                f"data.chat_template=true renders whole prompts, but dataset {ref} has no '{d.prompt_field}' column "
                f"(its prompts are openings of '{d.text_field}'): set data.chat_template=auto or data.prompt_field"
            )
        texts, _, others = _text_rows(ref, d.text_field, stamp, text_columns)
        keep = _text_keep(texts, part)
        if not any(keep):
            raise _empty(ref, part, f"rows with text in column '{d.text_field}'")
        return PromptSet(
            [t for t, k in zip(texts, keep) if k],
            None,
            {name: [v for v, k in zip(values, keep) if k] for name, values in others.items()},
        )
    raise UserError(
        f"dataset {ref} has neither a prompt column '{d.prompt_field}' (data.prompt_field) nor a text column "
        f"'{d.text_field}' (data.text_field); its columns: {', '.join(columns)}: set one of the two keys"
    )


def _empty(ref: str, part: str, what: str) -> UserError:
    if part == "test":
        return UserError(
            f"dataset {ref} has no held-out {what} (about {TEST_PERCENT}% of rows are held out by a hash): "
            "set eval.dataset to a dataset of evaluation prompts"
        )
    return UserError(f"dataset {ref} (split {part}) has no {what}: check the file and data.prompt_field/text_field")


@functools.lru_cache(maxsize=4)
def _prompt_rows(
    ref: str, prompt_field: str, stamp: tuple | None, text_columns: tuple[str, ...]
) -> tuple[tuple, dict[str, tuple], int]:
    """(normalized prompts, other columns, rows without a prompt) of every row with a prompt."""
    table = _read(ref, stamp, text_columns)
    raw = _column(table, prompt_field)
    keep = [v is not None and v != "" for v in raw]
    prompts = tuple(
        chat.normalize(v, f"dataset {ref}: row {i} of column '{prompt_field}'") for i, v in enumerate(raw) if keep[i]
    )
    others = {
        name: tuple(v for v, k in zip(_column(table, name), keep) if k)
        for name in table.column_names
        if name != prompt_field
    }
    return prompts, others, len(raw) - len(prompts)


_RENDERED: dict[tuple, PromptSet] = {}  # the preflight's rendering, reused by the driver in the same process


def _whole_prompts(cfg: Config, tokenizer, ref: str, part: Split) -> PromptSet:
    """Rendering is the slow part (a template per row: about 0.4 ms each on this 2-core CPU), so a set is kept
    per (file version, split, data keys, tokenizer and template)."""
    d = cfg.data
    key = (ref, file_stamp(ref), part, d.prompt_field, d.text_field, d.chat_template, d.max_prompt_tokens)
    key += (tokenizer.name_or_path, getattr(tokenizer, "chat_template", None))
    if key not in _RENDERED:
        if len(_RENDERED) >= 2:
            _RENDERED.pop(next(iter(_RENDERED)))
        _RENDERED[key] = _render_prompts(cfg, tokenizer, ref, part)
    return _RENDERED[key]


def _render_prompts(cfg: Config, tokenizer, ref: str, part: Split) -> PromptSet:
    d = cfg.data
    prompts, others, missing = _prompt_rows(ref, d.prompt_field, file_stamp(ref), (d.prompt_field, d.text_field))
    if missing:
        log.warning("data: %d rows of %s have no prompt in column '%s' and are skipped", missing, ref, d.prompt_field)
    chat.check_mode(d.chat_template, tokenizer, any(not isinstance(p, str) for p in prompts), f"dataset {ref}")
    percent = arithmetic.heldout_percent(ref) if arithmetic.is_arithmetic(ref) else TEST_PERCENT
    keep = [_in_split(split_key(p), part, percent) for p in prompts]
    if not any(keep):
        raise _empty(ref, part, f"prompts in column '{d.prompt_field}'")
    rows = [i for i, k in enumerate(keep) if k]
    texts = [chat.render(prompts[i], tokenizer, d.chat_template) for i in rows]
    lengths = _token_counts(texts, tokenizer)
    fits = [n <= d.max_prompt_tokens for n in lengths]
    if not all(fits):
        dropped = fits.count(False)
        if dropped == len(fits):
            raise UserError(
                f"dataset {ref}: all {dropped} prompts are longer than data.max_prompt_tokens={d.max_prompt_tokens} "
                f"tokens (the shortest has {min(lengths)}): raise data.max_prompt_tokens or shorten the prompts"
            )
        log.warning(
            "data: %d of %d prompts of %s are longer than data.max_prompt_tokens=%d tokens and are skipped",
            dropped,
            len(fits),
            ref,
            d.max_prompt_tokens,
        )
    rows = [i for i, ok in zip(rows, fits) if ok]
    return PromptSet(
        [t for t, ok in zip(texts, fits) if ok],
        [prompts[i] for i in rows],
        {name: [values[i] for i in rows] for name, values in others.items()},
    )


def _token_counts(texts: list[str], tokenizer, chunk: int = 1024) -> list[int]:
    # as the generator encodes them (models.generate.encode_prompts): no special tokens added
    counts: list[int] = []
    for start in range(0, len(texts), chunk):
        counts += [len(ids) for ids in tokenizer(texts[start : start + chunk], add_special_tokens=False)["input_ids"]]
    return counts


def longest_prompt(cfg: Config, prompts: PromptSet, tokenizer) -> int:
    """Tokens of the longest prompt the stream can draw (openings: data.prompt_max_tokens)."""
    if prompts.raws is None:
        return cfg.data.prompt_max_tokens
    return max(_token_counts(prompts.texts, tokenizer))


def rollout_rows(prompts: list[Prompt] | list[str], group_size: int) -> tuple[list | None, dict[str, list]]:
    """Rollout.raw_prompts and Rollout.columns for these prompts, each repeated for its group's rows."""
    items = [p if isinstance(p, Prompt) else Prompt(p) for p in prompts]
    raws = None
    if any(p.raw is not None for p in items):
        raws = [p.text if p.raw is None else p.raw for p in items for _ in range(group_size)]
    names = list(dict.fromkeys(name for p in items for name in p.columns))
    return raws, {name: [p.columns.get(name) for p in items for _ in range(group_size)] for name in names}


# ----------------------------------------------------------------------------- the stream


@dataclass
class PromptState:
    """Position in the prompt stream; saved in checkpoints so a resumed run sees new prompts."""

    epoch: int = 0
    cursor: int = 0


class PromptStream:
    """Prompts served in a seeded, per-epoch shuffled order; openings cut to a random token length."""

    def __init__(self, prompts: PromptSet | list[str], tokenizer, min_tokens: int, max_tokens: int, seed: int):
        """prompts: a PromptSet, or plain texts to cut openings from."""
        if not isinstance(prompts, PromptSet):
            prompts = PromptSet(list(prompts))
        if not len(prompts):
            raise UserError("the prompt dataset is empty: check data.dataset")
        self.prompts = prompts
        self.tokenizer = tokenizer
        self.min_tokens, self.max_tokens, self.seed = min_tokens, max_tokens, seed
        self.state = PromptState()

    def __len__(self) -> int:
        return len(self.prompts)

    def _order(self, epoch: int):
        return seeds.permutation(len(self.prompts), seeds.prompt_order(self.seed, epoch))

    def _opening(self, index: int) -> str:
        import torch

        # The prompt length depends only on (seed, index): resuming reproduces the same prompts.
        gen = torch.Generator().manual_seed(seeds.prompt_length(self.seed, index))
        n = int(torch.randint(self.min_tokens, self.max_tokens + 1, (1,), generator=gen))
        text = self.prompts.texts[index]
        ids = self.tokenizer(text, add_special_tokens=False, truncation=True, max_length=n)["input_ids"]
        return self.tokenizer.decode(ids)

    def _prompt(self, index: int) -> Prompt:
        p = self.prompts
        columns: dict[str, Any] = {name: values[index] for name, values in p.columns.items()}
        if p.raws is None:
            return Prompt(self._opening(index), None, columns)
        return Prompt(p.texts[index], p.raws[index], columns)

    def next(self, n: int) -> list[Prompt]:
        prompts: list[Prompt] = []
        order = self._order(self.state.epoch)
        while len(prompts) < n:
            if self.state.cursor >= len(order):
                self.state = PromptState(self.state.epoch + 1, 0)
                order = self._order(self.state.epoch)
            prompts.append(self._prompt(order[self.state.cursor]))
            self.state.cursor += 1
        return prompts


def prompt_stream(cfg: Config, tokenizer, split: Literal["train", "heldout"] = "train") -> PromptStream:
    """The stream the PPO driver (train) or `rlhf-ray eval` (heldout) draws prompts from."""
    d = cfg.data
    return PromptStream(
        prompt_set(cfg, tokenizer, split), tokenizer, d.prompt_min_tokens, d.prompt_max_tokens, cfg.run.seed
    )
