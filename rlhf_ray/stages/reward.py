"""Recipe step 2b: train the sentiment reward classifier on labelled reviews (IMDB by default).

`reward.method=full` fine-tunes the whole (small) encoder with a fresh 2-label head;
`reward.method=lora` trains a LoRA on a `reward.quant`-quantized encoder with the head kept
trainable (peft's modules_to_save) and saves an adapter dir + labels.json, the layout
rlhf_ray.rewards.classifier.load_classifier reads. Training runs in a Ray task on the reward scorer's
GPU share (cluster.scorer_gpus); the files come back as bytes and the driver writes
run_dir/model, which RewardModel(run_dir/"model") loads."""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from rlhf_ray.config.schema import Config
from rlhf_ray.errors import UserError
from rlhf_ray.models.policy import role_device
from rlhf_ray.stages.common import begin, finish, prepare_worker, stream_task
from rlhf_ray.stages.sft import MAX_GRAD_NORM
from rlhf_ray.store import seeds
from rlhf_ray.store.checkpoint import read_dir, write_dir

log = logging.getLogger(__name__)

ID2LABEL = {0: "negative", 1: "positive"}
WARMUP_FRACTION = 0.1  # linear warmup then decay: the usual BERT fine-tuning schedule


def labelled_sample(ref: str, split: str, n: int, seed: int) -> tuple[list[str], list[int]]:
    """`n` rows of a split in a seeded order (the embedded IMDB file is sorted by label, so a
    shuffle is what makes the sample balanced)."""
    from rlhf_ray.data.prompts import load_text_dataset

    table = load_text_dataset(ref, split)
    if "label" not in table.column_names:
        raise UserError(f"reward.dataset {ref} has no 'label' column: the classifier needs 0/1 sentiment labels")
    order = seeds.permutation(table.num_rows, seed)[:n]
    texts, labels = table["text"].to_pylist(), table["label"].to_pylist()
    picked = [labels[i] for i in order]
    if not set(picked) <= set(ID2LABEL):
        raise UserError(
            f"reward.dataset {ref}: labels must be 0 (negative) or 1 (positive); got {sorted(set(picked))[:5]}"
        )
    return [texts[i] for i in order], picked


def encode(tokenizer, texts: list[str], max_length: int, device: str) -> dict[str, torch.Tensor]:
    return tokenizer(texts, return_tensors="pt", padding=True, truncation=True, max_length=max_length).to(device)


@torch.no_grad()
def evaluate(
    model, tokenizer, texts: list[str], labels: list[int], batch_size: int, max_length: int, device: str
) -> dict[str, float]:
    """Held-out accuracy and the mean logit margin (the PPO reward) of positive minus negative texts."""
    model.eval()
    logits = torch.cat(
        [
            model(**encode(tokenizer, texts[i : i + batch_size], max_length, device)).logits.float().cpu()
            for i in range(0, len(texts), batch_size)
        ]
    )
    target = torch.tensor(labels)
    margin = logits[:, 1] - logits[:, 0]
    return {
        "accuracy": (logits.argmax(-1) == target).float().mean().item(),
        "score_gap": (margin[target == 1].mean() - margin[target == 0].mean()).item(),
    }


def build_classifier(cfg: Config, backbone: str, device: str):
    """A 2-label classifier: the full encoder (method=full) or a quantized one + LoRA (method=lora)."""
    from transformers import AutoModelForSequenceClassification

    from rlhf_ray.models.policy import attach_lora, load_kwargs
    from rlhf_ray.rewards.classifier import HEAD_MODULES

    r = cfg.reward
    quant = r.quant if r.method == "lora" else "none"
    kwargs = load_kwargs(quant, device, HEAD_MODULES)
    if r.method == "full" and device == "cuda":
        kwargs["dtype"] = torch.float32  # every weight trains: keep fp32 master weights
    # A backbone without a head (e.g. MiniLM's BertModel) gets a fresh 2-label one.
    model = AutoModelForSequenceClassification.from_pretrained(
        backbone, num_labels=2, id2label=ID2LABEL, label2id={v: k for k, v in ID2LABEL.items()}, **kwargs
    )
    if r.method == "lora":
        # Policy LoRA size; targets None -> the encoder's own defaults (the policy's may not exist here).
        # task_type SEQ_CLS makes peft keep the classifier head trainable (modules_to_save).
        model = attach_lora(
            model, cfg.model.lora_r, cfg.model.lora_alpha, cfg.model.lora_dropout, None, task_type="SEQ_CLS"
        )
    return model


def save_classifier(model, tokenizer, method: str, directory: Path) -> Path:
    """method=full: a plain checkpoint; method=lora: adapter + labels.json (see load_classifier)."""
    model.save_pretrained(str(directory))
    tokenizer.save_pretrained(str(directory))
    if method == "lora":
        (directory / "labels.json").write_text(json.dumps({str(k): v for k, v in ID2LABEL.items()}))
    return directory


def train_reward(cfg: Config) -> Iterator[tuple[str, dict]]:
    """Ray task body: yields ("step", record) per optimizer step, then ("done", {files, metrics})."""
    from transformers import AutoTokenizer, get_linear_schedule_with_warmup

    from rlhf_ray.models.assets import resolve_model

    r, seed = cfg.reward, cfg.run.seed
    prepare_worker(seed, cfg.cluster.torch_threads)
    device = role_device(cfg.cluster.scorer_gpus)
    backbone = resolve_model(r.backbone, cfg.cache_dir())
    train_texts, train_labels = labelled_sample(r.dataset, "train", r.train_size, seed)
    eval_texts, eval_labels = labelled_sample(r.dataset, "test", r.eval_size, seed)
    tokenizer = AutoTokenizer.from_pretrained(backbone)
    # Keep a long review's END: reviews state their verdict last ("tail" beats "head" truncation on
    # IMDB, Sun et al. 2019). Saved with the tokenizer, so the scorer truncates the same side.
    tokenizer.truncation_side = "left"
    model = build_classifier(cfg, backbone, device)
    params = [p for p in model.parameters() if p.requires_grad]
    steps = r.epochs * -(-len(train_texts) // r.train_batch_size)
    optimizer = torch.optim.AdamW(params, lr=r.lr, weight_decay=0.01)
    schedule = get_linear_schedule_with_warmup(optimizer, int(WARMUP_FRACTION * steps), steps)
    before = evaluate(model, tokenizer, eval_texts, eval_labels, r.batch_size, r.train_max_length, device)
    step, start = 0, time.perf_counter()
    for _, order in zip(range(r.epochs), seeds.permutations(len(train_texts), seed)):
        for i in range(0, len(order), r.train_batch_size):
            model.train()
            rows = order[i : i + r.train_batch_size]
            enc = encode(tokenizer, [train_texts[j] for j in rows], r.train_max_length, device)
            loss = model(**enc, labels=torch.tensor([train_labels[j] for j in rows], device=device)).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            yield (
                "step",
                {
                    "step": step,
                    "loss": loss.item(),
                    "lr": schedule.get_last_lr()[0],
                    "elapsed_s": round(time.perf_counter() - start, 2),
                },
            )
    train_s = time.perf_counter() - start
    after = evaluate(model, tokenizer, eval_texts, eval_labels, r.batch_size, r.train_max_length, device)
    with tempfile.TemporaryDirectory() as tmp:
        files = read_dir(save_classifier(model, tokenizer, r.method, Path(tmp)))
    yield (
        "done",
        {
            "files": files,
            "metrics": {
                "accuracy_before": before["accuracy"],
                "accuracy": after["accuracy"],
                "score_gap": after["score_gap"],
                "method": r.method,
                "steps": step,
                "train_size": len(train_texts),
                "eval_size": len(eval_texts),
                "train_s": round(train_s, 1),
                "trainable_params": sum(p.numel() for p in params),
            },
        },
    )


def run(cfg: Config, run_dir: Path, resume: bool = False) -> dict:
    if (done := begin(run_dir, resume)) is not None:
        return done
    start = time.perf_counter()
    r = cfg.reward
    options = {"num_gpus": cfg.cluster.scorer_gpus, "num_cpus": cfg.cluster.actor_cpus}
    steps = r.epochs * -(-r.train_size // r.train_batch_size)  # upper bound: the split may hold fewer rows
    result = stream_task(
        cfg.cluster, train_reward, options, (cfg,), total=steps, desc="reward", jsonl=run_dir / "metrics.jsonl"
    )
    model_dir = write_dir(result["files"], run_dir / "model")
    log.info(
        "reward: held-out accuracy %.3f -> %.3f; classifier in %s",
        result["metrics"]["accuracy_before"],
        result["metrics"]["accuracy"],
        model_dir,
    )
    return finish(
        run_dir,
        {
            "stage": "reward",
            "model": str(model_dir),
            **result["metrics"],
            "wall_s": round(time.perf_counter() - start, 1),
        },
    )
