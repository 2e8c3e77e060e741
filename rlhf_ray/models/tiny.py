"""Tiny random models for fast tests and smoke runs, built offline from configs.

The tokenizer is a small byte-level BPE trained on a slice of the embedded IMDB reviews, so text
round-trips and sentiment words are real tokens; the weights are random but seeded, so a build is
reproducible. Exposed as the embedded assets `tiny-random-llama` and `tiny-random-bert`."""

from __future__ import annotations

from pathlib import Path

from rlhf_ray.data.prompts import load_text_dataset
from rlhf_ray.store.checkpoint import publish_once, temp_dir

VOCAB_SIZE = 512
SPECIAL = ["<pad>", "<eos>", "<unk>", "[CLS]", "[SEP]"]


def build_tokenizer(vocab_size: int = VOCAB_SIZE):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    texts = load_text_dataset("imdb", "train")["text"].to_pylist()[:2000]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        eos_token="<eos>",
        unk_token="<unk>",
        cls_token="[CLS]",
        sep_token="[SEP]",
        model_max_length=512,
    )


def _save(model, tokenizer, target: Path) -> Path:
    from transformers.utils import logging as hf_logging

    tmp = temp_dir(target.parent, ".tmp-")
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a first-use build must not print a "Writing model shards" bar
    try:
        model.save_pretrained(str(tmp))
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    tokenizer.save_pretrained(str(tmp))
    publish_once(tmp, target)  # a concurrent build that finished first is kept
    return target


def build_tiny_causal_lm(target: Path, arch: str = "llama", seed: int = 0) -> Path:
    """A 2-layer random causal LM (Llama or GPT-NeoX layout) with the tiny BPE tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, GPTNeoXConfig, LlamaConfig

    tokenizer = build_tokenizer()
    common = dict(
        vocab_size=len(tokenizer),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    config = LlamaConfig(num_key_value_heads=2, **common) if arch == "llama" else GPTNeoXConfig(**common)
    torch.manual_seed(seed)
    return _save(AutoModelForCausalLM.from_config(config), tokenizer, target)


def build_tiny_classifier(target: Path, seed: int = 0) -> Path:
    """A 2-layer random BERT sequence classifier (2 labels) with the tiny BPE tokenizer."""
    import torch
    from transformers import AutoModelForSequenceClassification, BertConfig

    tokenizer = build_tokenizer()
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=512,
        num_labels=2,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    return _save(AutoModelForSequenceClassification.from_config(config), tokenizer, target)


BUILDERS = {
    "tiny-random-llama": lambda target: build_tiny_causal_lm(target, "llama"),
    "tiny-random-neox": lambda target: build_tiny_causal_lm(target, "neox"),
    "tiny-random-bert": build_tiny_classifier,
}
