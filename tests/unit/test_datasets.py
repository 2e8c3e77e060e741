"""User datasets: every file type loads its prompts and extra columns, the held-out split is a stable
hash, and each way a data file goes wrong is read correctly or refused in one line naming the file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from rlhf_ray.config.load import load_config
from rlhf_ray.data.prompts import _prompt_rows, clean_text, load_text_dataset, prompt_set
from rlhf_ray.data.tables import is_heldout, read_table, split_key
from rlhf_ray.errors import UserError
from rlhf_ray.models.policy import load_tokenizer
from rlhf_ray.stages.sft import sft_rows, tokenized
from rlhf_ray.tools.sample import read_prompts

ROWS = [{"prompt": f"What is {i} + {i + 1}?", "answer": str(2 * i + 1), "level": i % 3} for i in range(60)]


@pytest.fixture(scope="module")
def tokenizer(tiny_lm):
    return load_tokenizer(tiny_lm)


def _cfg(dataset, *overrides):
    return load_config("configs/smoke.yaml", [f"data.dataset={dataset}", *overrides])


def _write(path, rows=ROWS):
    """The same rows in the format the suffix names."""
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif path.suffix == ".json":
        path.write_text(json.dumps(rows, indent=2))
    elif path.suffix == ".parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
    elif path.suffix == ".csv":
        pacsv.write_csv(pa.Table.from_pylist(rows), path)
    else:  # a `datasets` save_to_disk directory
        import datasets

        datasets.Dataset.from_list(rows).save_to_disk(str(path))
    return str(path)


@pytest.mark.parametrize("name", ["rows.jsonl", "rows.json", "rows.parquet", "rows.csv", "saved"])
def test_each_file_type_gives_its_train_prompts_with_every_other_column(tmp_path, tokenizer, name):
    ref = _write(tmp_path / name)
    train = [r for r in ROWS if not is_heldout(r["prompt"])]
    assert 0 < len(train) < len(ROWS)  # the split holds some rows out
    prompts = prompt_set(_cfg(ref), tokenizer, "train")
    assert prompts.raws == [r["prompt"] for r in train]
    assert prompts.texts == prompts.raws  # plain strings, chat_template auto: used as given
    # CSV has no types: pyarrow infers them for the columns other than prompt/text ("7" -> 7)
    answers = [int(r["answer"]) if name.endswith(".csv") else r["answer"] for r in train]
    assert prompts.columns == {"answer": answers, "level": [r["level"] for r in train]}
    held = prompt_set(_cfg(ref), tokenizer, "heldout")
    assert sorted(held.raws + prompts.raws) == sorted(r["prompt"] for r in ROWS)


def test_message_prompts_split_by_canonical_json(tmp_path, tokenizer):
    rows = [
        {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"Name {i}"}], "answer": i}
        for i in range(200)
    ]
    ref = _write(tmp_path / "chat.jsonl", rows)
    table = read_table(ref)
    assert table.column_names == ["prompt", "answer"]
    # key order and whitespace do not move a row between the splits
    reordered = [{"content": m["content"], "role": m["role"]} for m in rows[0]["prompt"]]
    assert (
        split_key(reordered)
        == split_key(rows[0]["prompt"])
        == json.dumps(rows[0]["prompt"], sort_keys=True, separators=(",", ":"))
    )
    held = [r for r in rows if is_heldout(split_key(r["prompt"]))]
    assert 5 <= len(held) <= 40  # about 10%
    # the rows as the stream draws them (the tiny tokenizer has no template: chat_template=false is refused,
    # so read them with SmolLM2's in test_datasets_chat.py); here: the normalized rows and their columns
    prompts, others, missing = _prompt_rows(ref, "prompt", None, ("prompt", "text"))
    assert list(prompts) == [r["prompt"] for r in rows] and list(others["answer"]) == list(range(200))
    assert missing == 0


def test_eval_dataset_is_used_whole_and_a_split_without_rows_names_eval_dataset(tmp_path, tokenizer):
    small = _write(tmp_path / "small.jsonl", [r for r in ROWS if not is_heldout(r["prompt"])][:3])
    with pytest.raises(UserError, match="no held-out prompts.*set eval.dataset"):
        prompt_set(_cfg(small), tokenizer, "heldout")
    other = _write(tmp_path / "eval.jsonl", ROWS[:5])
    held = prompt_set(_cfg(small, f"eval.dataset={other}"), tokenizer, "heldout")
    assert held.raws == [r["prompt"] for r in ROWS[:5]]


def test_text_column_gives_openings_and_keeps_imdb_defaults(tmp_path, tokenizer):
    ref = _write(tmp_path / "reviews.jsonl", [{"review": f"Film number {i} was good", "stars": i} for i in range(30)])
    prompts = prompt_set(_cfg(ref, "data.text_field=review"), tokenizer, "train")
    assert prompts.raws is None and set(prompts.columns) == {"stars"}  # openings: cut when drawn
    imdb = prompt_set(load_config("configs/smoke.yaml"), tokenizer, "train")
    assert imdb.raws is None and imdb.texts == load_text_dataset("imdb", "train")["text"].to_pylist()
    assert set(imdb.columns) == {"label"}


# ----------------------------------------------------------------------------- robustness


def test_csv_with_invalid_utf8_is_one_line_naming_file_and_line(tmp_path, tokenizer):
    path = tmp_path / "latin1.csv"
    path.write_bytes("prompt,answer\nfine,1\ncaf\xe9 au lait,2\n".encode("latin-1"))
    with pytest.raises(UserError) as err:
        prompt_set(_cfg(path), tokenizer, "train")
    message = str(err.value)
    assert "\n" not in message and str(path) in message
    assert "not valid UTF-8 (line 3, byte 0xe9)" in message and "re-save it as UTF-8" in message
    # a bad byte in another column (read as bytes by pyarrow, not forced to text) is refused the same way
    path.write_bytes("prompt,note\nfine,caf\xe9\n".encode("latin-1"))
    with pytest.raises(UserError, match="line 2, byte 0xe9"):
        prompt_set(_cfg(path), tokenizer, "train")


def test_numeric_columns(tmp_path, tokenizer):
    # CSV has no types: a prompt column of numbers is text
    csv = tmp_path / "years.csv"
    csv.write_text("prompt,answer\n1984,Orwell\n2001,Clarke\n451,Bradbury\n")
    prompts = prompt_set(_cfg(csv), tokenizer, "train")
    assert set(prompts.raws) <= {"1984", "2001", "451"} and all(isinstance(p, str) for p in prompts.raws)
    # a typed file's numbers are not prompts / texts: one line naming the key to change
    ints = _write(tmp_path / "ints.jsonl", [{"prompt": i, "text": "x"} for i in range(5)])
    with pytest.raises(UserError, match=r"row 0 of column 'prompt' holds int 0: a prompt must be a string"):
        prompt_set(_cfg(ints), tokenizer, "train")
    texts = _write(tmp_path / "texts.jsonl", [{"text": i} for i in range(5)])
    with pytest.raises(UserError, match=r"column 'text' holds int64 values, not text: set data.text_field"):
        prompt_set(_cfg(texts), tokenizer, "train")


def test_json_array_file_is_read(tmp_path):
    ref = _write(tmp_path / "rows.json")
    assert read_table(ref).to_pylist() == ROWS
    jsonl_named_json = tmp_path / "lines.json"
    jsonl_named_json.write_text("".join(json.dumps(r) + "\n" for r in ROWS[:3]))
    assert read_table(str(jsonl_named_json)).to_pylist() == ROWS[:3]


def test_json_line_over_one_mib_is_read_whole(tmp_path):
    long = "word " * 500_000  # 2.5 MB on one line: pyarrow's default 1 MiB block cannot hold it
    rows = [{"prompt": "Summarize:", "context": long}, {"prompt": "Next", "context": "short"}]
    ref = _write(tmp_path / "long.jsonl", rows)
    assert read_table(ref).to_pylist() == rows


def test_quoted_multiline_csv_values_across_block_boundaries(tmp_path):
    # ~2.4 MB: several 1 MiB blocks, so some block boundary falls inside a quoted multi-line value
    rows = [{"prompt": f"Line one of {i}\nline two\n\nline four " + "x" * 200, "answer": i} for i in range(10_000)]
    path = tmp_path / "multi.csv"
    pacsv.write_csv(pa.Table.from_pylist(rows), path)
    assert read_table(str(path), ("prompt",)).to_pylist() == rows


def test_broken_files_are_one_line_user_errors(tmp_path):
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text('{"prompt": "a", "answer": 4}\n{"prompt": "b", "answer": "four"}\n')
    with pytest.raises(UserError, match=r"mixed.jsonl cannot be read .*changed from number to string.*one type"):
        read_table(str(mixed))
    parquet = tmp_path / "bad.parquet"
    parquet.write_text("not parquet")
    with pytest.raises(UserError, match="bad.parquet is not a readable Parquet file"):
        read_table(str(parquet))
    with pytest.raises(UserError, match="unsupported type: use .jsonl, .json, .parquet, .csv or .tsv"):
        read_table(str(_write_text(tmp_path / "rows.xlsx", "x")))


def _write_text(path, text):
    path.write_text(text)
    return path


def test_sft_caps_each_document_at_what_its_rows_can_use(tmp_path, tokenizer):
    book = " ".join(f"w{i}" for i in range(400_000))  # one row holding a book
    ids = next(tokenized([book], tokenizer, 16))
    assert ids == tokenizer(book[:2000], add_special_tokens=False)["input_ids"][:16]
    assert not is_heldout(clean_text(book))  # the book is a training document
    rows = [{"text": book}] + [{"text": f"A short review number {i}."} for i in range(300)]
    ref = _write(tmp_path / "docs.jsonl", rows)
    sizes = ["sft.max_length=32", "sft.max_steps=2", "sft.batch_size=2", "sft.grad_accum=1", "sft.eval_blocks=4"]
    cfg = load_config(None, [f"sft.dataset={ref}", *sizes])
    train, _ = sft_rows(cfg.sft, tokenizer, seed=0)
    # packing: the book fills at most the 2 x 2 x 1 rows training reads, not the ~50k its tokens would make
    book_rows = 2 * 2 * 1
    short_rows = len(train) - book_rows
    assert len(train) < book_rows + 300 and short_rows > 0
    cfg.sft.packing = False
    train, _ = sft_rows(cfg.sft, tokenizer, seed=0)
    assert max(len(r) for r in train) == 32


@pytest.mark.slow  # 3-5 s on 2 cores: in `make test`, not in test-fast (a CLI subprocess)
def test_generate_reads_the_prompts_file_as_utf8_whatever_the_locale(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("Café au lait ☕ is\n\nNaïve prompt\n", encoding="utf-8")
    code = (
        "import locale, sys, types; from rlhf_ray.tools.sample import read_prompts; "
        "print(locale.getpreferredencoding(False)); "
        "print(ascii(read_prompts(types.SimpleNamespace(prompt=[], prompts_file=sys.argv[1], samples=1))))"
    )
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}
    out = subprocess.run([sys.executable, "-c", code, str(path)], env=env, capture_output=True, text=True, check=True)
    encoding, prompts = out.stdout.strip().splitlines()
    assert encoding.upper() in ("ANSI_X3.4-1968", "ASCII", "US-ASCII")  # the locale would have failed the read
    assert prompts == ascii(["Café au lait ☕ is", "Naïve prompt"])
    path.write_bytes(b"caf\xe9\n")
    with pytest.raises(UserError, match=r"prompts.txt is not valid UTF-8 \(byte 3\): re-save it as UTF-8"):
        read_prompts(types.SimpleNamespace(prompt=[], prompts_file=str(path), samples=1))
