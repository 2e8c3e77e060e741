"""Offline assets: the embedded IMDB reviews and SmolLM2 policy load as real data and a real model."""

from __future__ import annotations

import pytest

from rlhf_ray.data.prompts import PromptStream, load_text_dataset
from rlhf_ray.errors import UserError
from rlhf_ray.models.assets import resolve_model


def test_imdb_has_25000_labelled_reviews_and_stable_splits():
    table = load_text_dataset("imdb")
    assert table.num_rows == 25_000
    assert set(table["label"].to_pylist()) == {0, 1}
    assert "<br" not in " ".join(table["text"].to_pylist()[:200])
    train, test = load_text_dataset("imdb", "train"), load_text_dataset("imdb", "test")
    assert train.num_rows + test.num_rows == 25_000
    assert 2000 < test.num_rows < 3000
    assert set(train["text"].to_pylist()[:500]).isdisjoint(test["text"].to_pylist())
    assert load_text_dataset("imdb", "test")["text"].to_pylist()[:5] == test["text"].to_pylist()[:5]


def test_local_csv_and_clear_errors(tmp_path):
    good = tmp_path / "reviews.csv"
    good.write_text("review,label\nGreat film,1\nAwful film,0\n")
    table = load_text_dataset(str(good), text_field="review")
    assert table["text"].to_pylist() == ["Great film", "Awful film"]
    with pytest.raises(UserError, match="no column 'text'"):
        load_text_dataset(str(good))
    empty = tmp_path / "empty.csv"
    empty.write_text("text,label\n")
    with pytest.raises(UserError, match="no rows"):
        load_text_dataset(str(empty))
    with pytest.raises(UserError, match="does not exist"):
        load_text_dataset(str(tmp_path / "nope.csv"))


def test_missing_model_path_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        resolve_model(str(tmp_path / "nope"), tmp_path)
    with pytest.raises(UserError, match="no config.json"):
        resolve_model(str(tmp_path), tmp_path)


@pytest.mark.slow  # 3-5 s on 2 cores: in `make test`, not in test-fast
def test_smollm2_asset_continues_english(smollm2):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    model = AutoModelForCausalLM.from_pretrained(smollm2, dtype=torch.float32)
    assert model.config.model_type == "llama" and model.num_parameters() > 100e6
    inputs = tokenizer("The capital of France is", return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    text = tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in text


def test_prompt_stream_is_deterministic_and_resumable(tiny_lm):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_lm)
    texts = load_text_dataset("imdb", "train")["text"].to_pylist()[:50]
    a = PromptStream(texts, tokenizer, 2, 6, seed=3)
    first = a.next(30) + a.next(30)  # crosses an epoch boundary
    b = PromptStream(texts, tokenizer, 2, 6, seed=3)
    b.next(30)
    state = b.state
    c = PromptStream(texts, tokenizer, 2, 6, seed=3)
    c.state = state
    assert c.next(30) == first[30:]
    assert all(2 <= len(tokenizer(p.text, add_special_tokens=False)["input_ids"]) <= 7 for p in first)


def test_gguf_is_parsed_once_during_a_conversion_and_gguf_is_left_as_it_was(tmp_path):
    """convert_gguf's memo: the three parses transformers makes of one file share one reader, and the name
    table is built once per (architecture, layers); outside the conversion gguf is untouched."""
    import gguf
    import numpy as np

    from rlhf_ray.models.assets import gguf_parsed_once

    path = tmp_path / "tiny.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_tensor("token_embd.weight", np.zeros((4, 2), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    reader, names = gguf.GGUFReader, gguf.get_tensor_name_map
    with gguf_parsed_once():
        assert gguf.GGUFReader(path) is gguf.GGUFReader(path)
        assert gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, 2) is gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, 2)
    assert (gguf.GGUFReader, gguf.get_tensor_name_map) == (reader, names)
    assert gguf.GGUFReader(path) is not gguf.GGUFReader(path)
