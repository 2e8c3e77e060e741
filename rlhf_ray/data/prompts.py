"""Text datasets (embedded IMDB, local files, hub ids) with deterministic splits, and the PPO
prompt stream whose position is part of the checkpoint."""

from __future__ import annotations

import functools
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from rlhf_ray.errors import UserError
from rlhf_ray.store import seeds
from rlhf_ray.store.refs import DATASET_ASSETS, looks_like_path, resolve_dataset_file

Split = Literal["all", "train", "test"]
TEST_PERCENT = 10  # share of rows held out, chosen by a hash of the text (stable across versions/orders)


def clean_text(text: str) -> str:
    # IMDB reviews carry HTML line breaks; the recipe trains on plain text.
    return text.replace("<br /><br />", "\n").replace("<br />", " ").replace("<br/>", " ").strip()


def _is_test(text: str) -> bool:
    return zlib.crc32(text.encode("utf-8")) % 100 < TEST_PERCENT


def _load_table(ref: str) -> pa.Table:
    """Load the raw rows as an Arrow table (no split applied yet)."""
    if ref in DATASET_ASSETS:
        table = pacsv.read_csv(resolve_dataset_file(ref))
        return table.filter(pc.equal(table["source"], "imdb")).drop_columns(["source"])
    import datasets

    datasets.disable_progress_bars()
    path = Path(ref).expanduser()
    if path.is_dir():
        return datasets.load_from_disk(str(path)).data.table
    if path.exists():
        if path.suffix in (".csv", ".tsv"):
            delimiter = "\t" if path.suffix == ".tsv" else ","
            return pacsv.read_csv(path, parse_options=pacsv.ParseOptions(delimiter=delimiter))
        if path.suffix == ".parquet":
            return pq.read_table(path)
        if path.suffix in (".jsonl", ".json"):
            return pajson.read_json(path)
        raise UserError(f"dataset file {path} has an unsupported type: use .csv, .tsv, .parquet or .jsonl")
    if looks_like_path(ref):
        raise UserError(f"dataset path {ref} does not exist: fix data.dataset / sft.dataset")
    return datasets.load_dataset(ref, split="train").data.table  # hub id: needs network or a warm HF cache


@functools.lru_cache(maxsize=4)
def _clean_rows(ref: str, text_field: str, stamp: tuple | None) -> tuple[tuple, tuple | None, tuple]:
    """(texts, labels, is_test) of every row, cleaned once per process: stages read both splits,
    and the embedded CSV takes seconds to parse and clean. `stamp` keys local files by mtime/size."""
    table = _load_table(ref)
    if text_field not in table.column_names:
        raise UserError(
            f"dataset {ref} has no column '{text_field}' (columns: {', '.join(table.column_names)}); "
            "set data.text_field / sft.text_field"
        )
    texts = tuple(clean_text(t or "") for t in table[text_field].to_pylist())
    labels = tuple(table["label"].to_pylist()) if "label" in table.column_names else None
    return texts, labels, tuple(_is_test(t) for t in texts)


def load_text_dataset(ref: str, split: Split = "all", text_field: str = "text") -> pa.Table:
    """Rows with a cleaned `text` column (and `label` where the source has one), as an Arrow table.

    `train`/`test` are a deterministic 90/10 split by a hash of each text."""
    local = Path(ref).expanduser()
    stamp = (local.stat().st_mtime_ns, local.stat().st_size) if local.is_file() else None
    texts, labels, is_test = _clean_rows(ref, text_field, stamp)
    keep = [bool(t) and (split == "all" or test == (split == "test")) for t, test in zip(texts, is_test)]
    out = {"text": [t for t, k in zip(texts, keep) if k]}
    if labels is not None:
        out["label"] = [lab for lab, k in zip(labels, keep) if k]
    if not out["text"]:
        raise UserError(f"dataset {ref} (split {split}) has no rows with text: check the file and data.text_field")
    return pa.table(out)


@dataclass
class PromptState:
    """Position in the prompt stream; saved in checkpoints so a resumed run sees new prompts."""

    epoch: int = 0
    cursor: int = 0


class PromptStream:
    """Review openings of a random token length, served in a seeded, per-epoch shuffled order."""

    def __init__(self, texts: list[str], tokenizer, min_tokens: int, max_tokens: int, seed: int):
        if not texts:
            raise UserError("the prompt dataset is empty: check data.dataset")
        self.texts = texts
        self.tokenizer = tokenizer
        self.min_tokens, self.max_tokens, self.seed = min_tokens, max_tokens, seed
        self.state = PromptState()

    def _order(self, epoch: int):
        return seeds.permutation(len(self.texts), seeds.prompt_order(self.seed, epoch))

    def _opening(self, index: int) -> str:
        import torch

        # The prompt length depends only on (seed, index): resuming reproduces the same prompts.
        gen = torch.Generator().manual_seed(seeds.prompt_length(self.seed, index))
        n = int(torch.randint(self.min_tokens, self.max_tokens + 1, (1,), generator=gen))
        ids = self.tokenizer(self.texts[index], add_special_tokens=False, truncation=True, max_length=n)["input_ids"]
        return self.tokenizer.decode(ids)

    def next(self, n: int) -> list[str]:
        prompts: list[str] = []
        order = self._order(self.state.epoch)
        while len(prompts) < n:
            if self.state.cursor >= len(order):
                self.state = PromptState(self.state.epoch + 1, 0)
                order = self._order(self.state.epoch)
            prompts.append(self._opening(order[self.state.cursor]))
            self.state.cursor += 1
        return prompts
