"""Recipe step 1: fine-tune a fresh LoRA on the frozen quantized policy base as a causal LM on
review text. Training runs in a Ray task (same placement options as PPO); the task streams one
metrics record per optimizer step and finally the adapter files as bytes, which the driver
writes into the run directory (that directory may not exist on the worker's node)."""

from __future__ import annotations

import itertools
import logging
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch

from rlhf_ray.config.schema import Config
from rlhf_ray.data.prompts import load_text_dataset
from rlhf_ray.errors import UserError
from rlhf_ray.models.adapter import save_adapter
from rlhf_ray.models.assets import resolve_model
from rlhf_ray.models.policy import attach_lora, load_causal_lm, load_tokenizer, role_device
from rlhf_ray.stages.common import begin, finish, prepare_worker, stream_task
from rlhf_ray.store import seeds
from rlhf_ray.store.checkpoint import read_dir, write_dir
from rlhf_ray.store.provenance import model_card
from rlhf_ray.store.refs import portable_ref

log = logging.getLogger(__name__)

IGNORE_INDEX = -100  # label value torch's cross_entropy skips
CHARS_PER_TOKEN = 32  # generous: English averages ~4 characters per token
MAX_GRAD_NORM = 1.0  # clip: a fresh LoRA at a high lr can spike on an odd batch


def shuffled_texts(ref: str, split: str, text_field: str, seed: int, limit: int | None = None) -> list[str]:
    """A seeded shuffle of one split. The embedded IMDB file is sorted by label, so taking the
    first rows unshuffled would give only negative reviews."""

    texts = load_text_dataset(ref, split, text_field)["text"].to_pylist()
    return [texts[i] for i in seeds.permutation(len(texts), seed)[:limit]]


# ----------------------------------------------------------------------------- rows (pure)


def tokenized(texts: list[str], tokenizer, max_tokens: int, chunk: int = 64) -> Iterator[list[int]]:
    """The first `max_tokens` token ids of each text, tokenized lazily in chunks (eval stops after a
    few texts). A huge document (a whole book in one row) is cut to CHARS_PER_TOKEN x max_tokens
    characters before tokenizing: tokenizing all of it would cost time and memory for rows never used."""
    for start in range(0, len(texts), chunk):
        part = [text[: max_tokens * CHARS_PER_TOKEN] for text in texts[start : start + chunk]]
        yield from tokenizer(part, add_special_tokens=False, truncation=True, max_length=max_tokens)["input_ids"]


def pack(docs: Iterable[list[int]], eos_id: int, block: int) -> Iterator[list[int]]:
    """Concatenate docs, each ended by EOS, and cut the stream into full `block`-token rows."""
    buffer: list[int] = []
    for doc in docs:
        buffer.extend(doc)
        buffer.append(eos_id)
        while len(buffer) >= block:
            yield buffer[:block]
            buffer = buffer[block:]


def truncate(docs: Iterable[list[int]], eos_id: int, max_length: int) -> Iterator[list[int]]:
    """One row per doc: the doc plus EOS, cut to `max_length` tokens."""
    for doc in docs:
        yield (doc + [eos_id])[:max_length]


def collate(rows: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad rows. Labels are masked by length, not by token id: pad may equal EOS, and the
    real EOS ending a doc must stay in the loss."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, IGNORE_INDEX)}


def micro_batches(rows: list[list[int]], batch_size: int, seed: int) -> Iterator[list[list[int]]]:
    """Endless batches, reshuffled every pass over the rows."""
    for order in seeds.permutations(len(rows), seed):
        for start in range(0, len(order), batch_size):
            yield [rows[i] for i in order[start : start + batch_size]]


def target_count(batch: dict[str, torch.Tensor]) -> int:
    """Tokens that are predicted (every non-masked label after the first position)."""
    return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())


# ----------------------------------------------------------------------------- training (Ray task)


def nll_sum(model, batch: dict[str, torch.Tensor], device: str) -> torch.Tensor:
    """Summed next-token negative log-likelihood over unmasked labels (token-weighted means later)."""
    batch = {k: v.to(device) for k, v in batch.items()}
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].float().flatten(0, 1),
        batch["labels"][:, 1:].flatten(),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )


@torch.no_grad()
def eval_loss(model, rows: list[list[int]], batch_size: int, pad_id: int, device: str) -> float:
    model.eval()
    batches = [collate(rows[i : i + batch_size], pad_id) for i in range(0, len(rows), batch_size)]
    total = sum(nll_sum(model, b, device).item() for b in batches)
    return total / sum(target_count(b) for b in batches)


def sft_rows(s, tokenizer, seed: int) -> tuple[list[list[int]], list[list[int]]]:
    """Training rows from the first sft.train_docs shuffled train docs; sft.eval_blocks held-out
    rows from the test split (built the same way, packed or truncated)."""
    to_rows = pack if s.packing else truncate
    # A doc contributes at most what its rows can use: one row when truncating; when packing, every
    # row the run reads (train: max_steps x batch_size x grad_accum rows; eval: eval_blocks rows).
    train_cap = s.max_length * (s.max_steps * s.batch_size * s.grad_accum if s.packing else 1)
    eval_cap = s.max_length * (s.eval_blocks if s.packing else 1)
    train_texts = shuffled_texts(s.dataset, "train", s.text_field, seed, s.train_docs)
    train_rows = list(to_rows(tokenized(train_texts, tokenizer, train_cap), tokenizer.eos_token_id, s.max_length))
    test_texts = shuffled_texts(s.dataset, "test", s.text_field, seed)
    eval_docs = tokenized(test_texts, tokenizer, eval_cap)
    eval_rows = list(itertools.islice(to_rows(eval_docs, tokenizer.eos_token_id, s.max_length), s.eval_blocks))
    if not train_rows or not eval_rows:
        raise UserError(
            f"sft.dataset {s.dataset}: too little text for one {s.max_length}-token block "
            "in its train or test split; lower sft.max_length or use a larger dataset"
        )
    return train_rows, eval_rows


def train_sft(cfg: Config) -> Iterator[tuple[str, dict]]:
    """Ray task body: yields ("step", record) per optimizer step, then ("done", {files, metrics})."""

    s, m, seed = cfg.sft, cfg.model, cfg.run.seed
    prepare_worker(seed, cfg.cluster.torch_threads)
    device = role_device(s.gpus)
    path = resolve_model(m.policy, cfg.cache_dir())
    tokenizer = load_tokenizer(path)
    train_rows, eval_rows = sft_rows(s, tokenizer, seed)
    model = attach_lora(
        load_causal_lm(path, m.quant, device),
        m.lora_r,
        m.lora_alpha,
        m.lora_dropout,
        m.target_modules,
        gradient_checkpointing=m.gradient_checkpointing,
        layers=m.lora_layers,
    )
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=s.lr)
    before = eval_loss(model, eval_rows, s.batch_size, tokenizer.pad_token_id, device)
    batches = micro_batches(train_rows, s.batch_size, seed)
    start = time.perf_counter()
    for step in range(1, s.max_steps + 1):
        model.train()
        group = [collate(next(batches), tokenizer.pad_token_id) for _ in range(s.grad_accum)]
        tokens = sum(target_count(b) for b in group)
        loss = 0.0
        for batch in group:  # token-weighted mean over the whole accumulation window
            part = nll_sum(model, batch, device) / tokens
            part.backward()
            loss += part.item()
        torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        yield "step", {"step": step, "loss": loss, "tokens": tokens, "elapsed_s": round(time.perf_counter() - start, 2)}
    train_s = time.perf_counter() - start
    after = eval_loss(model, eval_rows, s.batch_size, tokenizer.pad_token_id, device)
    metrics = {
        "eval_loss_before": before,
        "eval_loss_after": after,
        "steps": s.max_steps,
        "train_rows": len(train_rows),
        "eval_rows": len(eval_rows),
        "train_s": round(train_s, 1),
        "trainable_params": sum(p.numel() for p in params),
    }
    with tempfile.TemporaryDirectory() as tmp:  # path -> bytes: run_dir is the driver's
        files = read_dir(
            save_adapter(
                model, tmp, base=portable_ref(m.policy), tokenizer=tokenizer, card=model_card(cfg, "sft", metrics)
            )
        )
    yield "done", {"files": files, "metrics": metrics}


def run(cfg: Config, run_dir: Path, resume: bool = False) -> dict:
    if (done := begin(run_dir, resume)) is not None:
        return done
    start = time.perf_counter()
    options = {"num_gpus": cfg.sft.gpus, "num_cpus": cfg.cluster.actor_cpus}
    result = stream_task(
        cfg.cluster, train_sft, options, (cfg,), total=cfg.sft.max_steps, desc="sft", jsonl=run_dir / "metrics.jsonl"
    )
    adapter = write_dir(result["files"], run_dir / "adapter")
    log.info(
        "sft: eval loss %.3f -> %.3f; adapter in %s",
        result["metrics"]["eval_loss_before"],
        result["metrics"]["eval_loss_after"],
        adapter,
    )
    return finish(
        run_dir,
        {"stage": "sft", "adapter": str(adapter), **result["metrics"], "wall_s": round(time.perf_counter() - start, 1)},
    )
