"""Reading a dataset reference into an Arrow table: the embedded IMDB file, a local .jsonl/.json/
.parquet/.csv/.tsv file, a `datasets` save_to_disk directory, or a hub id. Each way a file can be
unreadable ends in one UserError naming the file and the fix, never a pyarrow traceback."""

from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from rlhf_ray.errors import UserError
from rlhf_ray.store.refs import DATASET_ASSETS, looks_like_path, resolve_dataset_file

TEST_PERCENT = 10  # share of rows held out, chosen by a hash of the prompt/text (stable across versions/orders)
SUFFIXES = ".jsonl, .json, .parquet, .csv or .tsv"


def is_heldout(key: str, percent: int = TEST_PERCENT) -> bool:
    return zlib.crc32(key.encode("utf-8")) % 100 < percent


def split_key(prompt: Any) -> str:
    """What the held-out split hashes: a string as is, a message list as canonical JSON (key order
    and whitespace cannot move a row between the splits)."""
    if isinstance(prompt, str):
        return prompt
    return json.dumps(prompt, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def file_stamp(ref: str) -> tuple | None:
    """Keys caches of local files by (mtime, size): an edited file is read again."""
    path = Path(ref).expanduser()
    if path.is_file():
        stat = path.stat()
        return (stat.st_mtime_ns, stat.st_size)
    return None


def read_table(ref: str, text_columns: tuple[str, ...] = ()) -> pa.Table:
    """The raw rows of `ref` (no split applied). `text_columns`: columns a CSV must keep as text
    (CSV has no types: a column of "1984" and "42" would otherwise arrive as integers)."""
    if ref in DATASET_ASSETS:
        table = pacsv.read_csv(resolve_dataset_file(ref))
        return table.filter(pc.equal(table["source"], "imdb")).drop_columns(["source"])
    path = Path(ref).expanduser()
    if path.is_dir():
        return _read_saved_dataset(path)
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix in (".csv", ".tsv"):
            return _read_csv(path, "\t" if suffix == ".tsv" else ",", text_columns)
        if suffix == ".parquet":
            return _read_parquet(path)
        if suffix in (".jsonl", ".json"):
            return _read_json(path)
        raise UserError(f"dataset file {path} has an unsupported type: use {SUFFIXES}")
    if looks_like_path(ref):
        raise UserError(f"dataset path {ref} does not exist: fix data.dataset / sft.dataset / eval.dataset")
    import datasets

    datasets.disable_progress_bars()
    return datasets.load_dataset(ref, split="train").data.table  # hub id: needs network or a warm HF cache


def _read_saved_dataset(path: Path) -> pa.Table:
    import datasets

    datasets.disable_progress_bars()
    try:
        loaded = datasets.load_from_disk(str(path))
    except FileNotFoundError:
        raise UserError(
            f"dataset directory {path} is not a `datasets` save_to_disk directory: point at a {SUFFIXES} file"
        ) from None
    if isinstance(loaded, datasets.DatasetDict):  # save_to_disk of several splits: PPO reads `train`
        if "train" not in loaded:
            raise UserError(
                f"dataset directory {path} holds splits {', '.join(loaded)} but no 'train': save the split to use alone"
            )
        loaded = loaded["train"]
    return loaded.data.table


def _read_csv(path: Path, delimiter: str, text_columns: tuple[str, ...]) -> pa.Table:
    # newlines_in_values: a quoted value may span lines (without it a block boundary inside one
    # splits the row); text columns are forced to strings.
    parse = pacsv.ParseOptions(delimiter=delimiter, newlines_in_values=True)
    convert = pacsv.ConvertOptions(column_types={c: pa.string() for c in text_columns})
    table = _with_block_size(
        path, lambda block: pacsv.read_csv(path, pacsv.ReadOptions(block_size=block), parse, convert)
    )
    # pyarrow reads a column holding invalid UTF-8 as bytes (or fails converting a text column)
    if any(pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type) for f in table.schema):
        _raise_if_not_utf8(path)
    return table


def _read_parquet(path: Path) -> pa.Table:
    try:
        return pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise UserError(
            f"dataset file {path} is not a readable Parquet file ({_first_line(exc)}): re-export it"
        ) from None


def _read_json(path: Path) -> pa.Table:
    """A .json file holding one array of objects, or newline-delimited objects (.jsonl / .json)."""
    with path.open("rb") as f:
        head = f.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    if head.startswith(b"["):
        _raise_if_not_utf8(path)
        try:
            rows = json.loads(path.read_text(encoding="utf-8-sig"))
        except json.JSONDecodeError as exc:
            raise UserError(f"dataset file {path} is not valid JSON (line {exc.lineno}: {exc.msg}): fix it") from None
        if not all(isinstance(row, dict) for row in rows):
            raise UserError(f"dataset file {path} must hold an array of objects (one per row): fix it")
        try:
            return pa.Table.from_pylist(rows)
        except (pa.ArrowException, TypeError) as exc:
            raise UserError(
                f"dataset file {path}: {_first_line(exc)}: give each column one type in every row"
            ) from None
    return _with_block_size(path, lambda block: pajson.read_json(path, pajson.ReadOptions(block_size=block)))


def _with_block_size(path: Path, read):
    """Run `read(block_size)` with pyarrow's default block (1 MiB); a row longer than a block (a long
    document on one line) is read again with a block that holds the whole file."""
    try:
        return _arrow_read(path, read, None)
    except _BlockTooSmall:
        return _arrow_read(path, read, min(max(path.stat().st_size + 1, 1 << 20), (1 << 31) - 1))


class _BlockTooSmall(Exception):
    pass


def _arrow_read(path: Path, read, block_size: int | None) -> pa.Table:
    try:
        return read(block_size)
    except pa.ArrowInvalid as exc:
        message = _first_line(exc)
        if block_size is None and ("straddling" in message or "block size" in message):
            raise _BlockTooSmall from None
        if "UTF8" in message or "UTF-8" in message:
            _raise_if_not_utf8(path)
        if "changed from" in message:
            fix = "give each column one type in every row (e.g. all strings)"
        else:
            fix = "fix the file or convert it to .parquet"
        raise UserError(f"dataset file {path} cannot be read ({message}): {fix}") from None


def _raise_if_not_utf8(path: Path) -> None:
    data = path.read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise UserError(
            f"dataset file {path} is not valid UTF-8 (line {line}, byte 0x{data[exc.start]:02x}): "
            f"re-save it as UTF-8 (e.g. iconv -f latin1 -t utf-8 {path.name} > fixed{path.suffix})"
        ) from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
