"""Recipe step 2b: train the reward model (`rlhf-ray reward`).

reward.objective=classifier: a 2-label sentiment classifier on labelled reviews (IMDB by default),
cross-entropy; PPO scores with its logit margin (a `kind: classifier` source).
reward.objective=pairwise: a scalar reward model (one output) on preference pairs of prompt,
chosen and rejected text (rlhf_ray.data.pairs; the embedded imdb-pairs or a user's file),
Bradley-Terry loss -logsigmoid(r(prompt + chosen) - r(prompt + rejected)); PPO scores with its
output (a `kind: model` source). Both share the model set-up, the optimizer loop (fit) and the
output layout; each reports its held-out accuracy after training (and before, where the backbone
brings its own head: a fresh one is at chance).

`reward.method=full` fine-tunes the whole (small) encoder with a fresh head;
`reward.method=lora` trains a LoRA on a `reward.quant`-quantized encoder with the head kept
trainable (peft's modules_to_save) and saves an adapter dir + labels.json, the layout
rlhf_ray.rewards.classifier.load_classifier reads. Training runs in a Ray task on the reward scorer's
GPU share (cluster.scorer_gpus); the files come back as bytes and the driver writes
run_dir/model, which RewardModel(run_dir/"model") loads."""

from __future__ import annotations

import functools
import json
import logging
import random
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from rlhf_ray.algo.preference import bradley_terry_loss
from rlhf_ray.config.schema import Config, RewardConfig
from rlhf_ray.data.pairs import load_pairs
from rlhf_ray.data.prompts import clean_text, load_text_dataset
from rlhf_ray.errors import UserError
from rlhf_ray.models.assets import resolve_model
from rlhf_ray.models.loading import load_with_head
from rlhf_ray.models.policy import attach_lora, load_kwargs, role_device
from rlhf_ray.rewards.classifier import HEAD_MODULES
from rlhf_ray.rewards.ngrams import ENSEMBLE_DIR, blend, train_nb_logistic
from rlhf_ray.stages.common import begin, finish, prepare_worker, stream_task
from rlhf_ray.stages.sft import MAX_GRAD_NORM
from rlhf_ray.store import seeds
from rlhf_ray.store.checkpoint import read_dir, write_dir
from rlhf_ray.store.refs import IMDB_PAIRS, NGRAM_BACKBONE

log = logging.getLogger(__name__)

ID2LABEL = {0: "negative", 1: "positive"}
SCALAR_LABELS = {0: "reward"}  # the pairwise model's one output (labels.json makes a LoRA load with num_labels 1)
WARMUP_FRACTION = 0.1  # linear warmup then decay: the usual BERT fine-tuning schedule
# Words of a held-out review's opening for the accuracy on texts of the length PPO scores (the main job: a
# 4-8-token opening + 20 new tokens, ~20 words). The label is the whole review's: an opening often says
# nothing yet, so this accuracy is lower for any classifier.
OPENING_WORDS = 20


def labelled_sample(ref: str, split: str, n: int | None, seed: int) -> tuple[list[str], list[int]]:
    """`n` rows of a split (None: all) in a seeded order (the embedded IMDB file is sorted by label, so a
    shuffle is what makes the sample balanced)."""

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


def opening(text: str, words: int = OPENING_WORDS) -> str:
    """A review's first `words` words: about what PPO scores (a 4-8-token opening + 20 new tokens)."""
    return " ".join(clean_text(text).split()[:words])


def windows(texts: list[str], words: int, seed: int) -> list[str]:
    """One window of `words` consecutive words of each text, starting at a seeded random word (a shorter
    text whole): reward.train_window's training texts, each labelled with its whole review's label."""
    rng = random.Random(seed)
    out = []
    for text in texts:
        split = clean_text(text).split()
        start = rng.randrange(max(1, len(split) - words + 1))
        out.append(" ".join(split[start : start + words]))
    return out


def encode(tokenizer, texts: list[str], max_length: int, device: str) -> dict[str, torch.Tensor]:
    return tokenizer(texts, return_tensors="pt", padding=True, truncation=True, max_length=max_length).to(device)


@torch.no_grad()
def held_out_logits(model, tokenizer, texts: list[str], r: RewardConfig, device: str) -> torch.Tensor:
    """(N, num_labels) float32 logits on the CPU, in scoring batches (reward.batch_size), each text cut to
    reward.train_max_length tokens as training cut it (its end kept)."""
    model.eval()
    return torch.cat(
        [
            model(**encode(tokenizer, texts[i : i + r.batch_size], r.train_max_length, device)).logits.float().cpu()
            for i in range(0, len(texts), r.batch_size)
        ]
    )


class ClassifierObjective:
    """Cross-entropy over 0/1 sentiment labels; held-out accuracy and the mean logit margin (the PPO
    reward) of positive minus negative texts."""

    labels = ID2LABEL

    def __init__(self, r: RewardConfig, seed: int):
        self.texts, self.targets = labelled_sample(r.dataset, "train", r.train_size, seed)
        if r.train_window:
            self.texts = windows(self.texts, r.train_window, seed)
        self.eval_texts, self.eval_targets = labelled_sample(r.dataset, "test", r.eval_size, seed)
        self.report: dict = {}
        self.ngrams = None  # reward.ngram_ensemble: the fitted n-gram model, averaged with the encoder's margins

    def __len__(self) -> int:
        return len(self.texts)

    def eval_size(self) -> int:
        return len(self.eval_texts)

    def loss(self, model, tokenizer, rows: list[int], max_length: int, device: str) -> torch.Tensor:
        enc = encode(tokenizer, [self.texts[j] for j in rows], max_length, device)
        return model(**enc, labels=torch.tensor([self.targets[j] for j in rows], device=device)).loss

    def evaluate(self, model, tokenizer, r: RewardConfig, device: str, openings: bool = False) -> dict[str, float]:
        """Held-out accuracy and score gap; with `openings`, also the accuracy on their first OPENING_WORDS words.
        With an n-gram model beside the encoder, the ensemble's figures, and the encoder's alone as encoder_*."""
        sets = {"": self.eval_texts}
        if openings:
            sets["opening_"] = [opening(t) for t in self.eval_texts]
        out: dict[str, float] = {}
        for prefix, texts in sets.items():
            logits = held_out_logits(model, tokenizer, texts, r, device)
            if self.ngrams is not None:
                out[f"encoder_{prefix}accuracy"] = classifier_figures(logits, self.eval_targets)["accuracy"]
                logits = blend(logits, self.ngrams.margin(texts), pos=1)
            figures = classifier_figures(logits, self.eval_targets)
            out.update(figures if not prefix else {f"{prefix}accuracy": figures["accuracy"]})
        return out

    def fit_ngrams(self, r: RewardConfig, seed: int) -> None:
        """reward.ngram_ensemble: the n-gram model on every review of the training split (the encoder saw
        reward.train_size of them); evaluate() then scores the ensemble."""
        texts, targets = labelled_sample(r.dataset, "train", None, seed)
        self.ngrams, _ = train_nb_logistic(texts, targets)


def classifier_figures(logits: torch.Tensor, targets: list[int]) -> dict[str, float]:
    """logits (N, 2), 0/1 targets -> accuracy and the mean positive-minus-negative margin gap of the labels."""
    target = torch.tensor(targets)
    margin = logits[:, 1] - logits[:, 0]
    return {
        "accuracy": (logits.argmax(-1) == target).float().mean().item(),
        "score_gap": (margin[target == 1].mean() - margin[target == 0].mean()).item(),
    }


class PairwiseObjective:
    """Bradley-Terry over preference pairs, chosen and rejected texts of a step in one forward;
    held-out pairwise accuracy (share of pairs with r_chosen > r_rejected) and mean margin."""

    labels = SCALAR_LABELS

    def __init__(self, r: RewardConfig, seed: int):
        data = load_pairs(r.dataset, r.train_size, r.eval_size, seed)
        self.chosen, self.rejected = data.train.texts()
        self.eval_chosen, self.eval_rejected = data.heldout.texts()
        self.report = {"skipped_identical": data.skipped}

    def __len__(self) -> int:
        return len(self.chosen)

    def eval_size(self) -> int:
        return len(self.eval_chosen)

    def loss(self, model, tokenizer, rows: list[int], max_length: int, device: str) -> torch.Tensor:
        texts = [self.chosen[j] for j in rows] + [self.rejected[j] for j in rows]
        scores = model(**encode(tokenizer, texts, max_length, device)).logits[:, 0]
        return bradley_terry_loss(scores[: len(rows)], scores[len(rows) :])[0]

    def evaluate(self, model, tokenizer, r: RewardConfig, device: str, openings: bool = False) -> dict[str, float]:
        chosen = held_out_logits(model, tokenizer, self.eval_chosen, r, device)[:, 0]
        rejected = held_out_logits(model, tokenizer, self.eval_rejected, r, device)[:, 0]
        _, stats = bradley_terry_loss(chosen, rejected)
        return {"accuracy": stats["accuracy"].item(), "margin": stats["margin"].item()}


OBJECTIVES = {"classifier": ClassifierObjective, "pairwise": PairwiseObjective}


def build_reward_model(cfg: Config, backbone: str, device: str, id2label: dict[int, str]):
    """(model, new head keys): a sequence classifier with len(id2label) outputs, the full encoder
    (method=full) or a quantized one + LoRA (method=lora); the keys of the head it got fresh (empty
    when the backbone's own head fits)."""
    from transformers import AutoModelForSequenceClassification

    r = cfg.reward
    quant = r.quant if r.method == "lora" else "none"
    kwargs = load_kwargs(quant, device, HEAD_MODULES)
    if r.method == "full" and device == "cuda":
        kwargs["dtype"] = torch.float32  # every weight trains: keep fp32 master weights
    # A backbone without a head (e.g. MiniLM's BertModel), or with one of another size (a 2-label
    # classifier as a pairwise backbone), gets a fresh one: expected, so transformers' table of
    # "MISSING" keys is held back for one line of ours (a report of any other key still shows).
    model, head = load_with_head(
        AutoModelForSequenceClassification,
        backbone,
        HEAD_MODULES,
        num_labels=len(id2label),
        id2label=id2label,
        label2id={v: k for k, v in id2label.items()},
        ignore_mismatched_sizes=True,
        **kwargs,
    )
    if r.method == "lora":
        # Policy LoRA size; targets None -> the encoder's own defaults (the policy's may not exist here).
        # task_type SEQ_CLS makes peft keep the classifier head trainable (modules_to_save).
        model = attach_lora(
            model, cfg.model.lora_r, cfg.model.lora_alpha, cfg.model.lora_dropout, None, task_type="SEQ_CLS"
        )
    elif r.train_layers is not None:
        freeze_below(model, r.train_layers)
    return model, head


def freeze_below(model: torch.nn.Module, top: int) -> None:
    """reward.train_layers: only the top `top` layers of the encoder and what follows them (pooler,
    head) train. The layers are the model's longest ModuleList; every parameter registered before the
    first trained layer's (the embeddings, the lower layers) is frozen, so no backward runs below it."""
    layers = max((m for m in model.modules() if isinstance(m, torch.nn.ModuleList)), key=len, default=None)
    if layers is None or top > len(layers):
        size = 0 if layers is None else len(layers)
        raise UserError(f"reward.train_layers={top}: the reward backbone has {size} layers; use at most {size}")
    first = next(layers[len(layers) - top].parameters())
    for p in model.parameters():
        if p is first:
            return
        p.requires_grad_(False)


def head_line(r: RewardConfig, outputs: int, head: list[str]) -> str:
    """The one line that replaces transformers' LOAD REPORT of a fresh head."""
    what = "a new scalar head (1 output)" if r.objective == "pairwise" else f"a new {outputs}-label head"
    return (
        f"reward stage: {what} on {r.backbone} ({', '.join(head)} start random: the backbone has no head "
        "of this size); training it is what this stage does (a random head scores at chance: no held-out pass "
        "before the first step)"
    )


def plan_line(r: RewardConfig, steps: int) -> str:
    """What the reward stage is about to do, said before the task starts (its first step waits for
    the backbone to load, and for the held-out set to be scored where the backbone brings its own head)."""
    if r.method == "lora":
        weights = f"a LoRA on the {r.quant} encoder and the head"
    elif r.train_layers is not None:
        weights = f"the top {r.train_layers} encoder layers and the head; the rest frozen"
    else:
        weights = "the whole encoder and the head"
    if r.objective == "pairwise":
        what, rows, held = "a scalar reward model", f"{r.train_size} preference pairs", f"{r.eval_size} pairs"
    else:
        what, rows, held = "the sentiment classifier", f"{r.train_size} labelled reviews", f"{r.eval_size} reviews"
    epochs = f"{r.epochs} epoch" + ("s" if r.epochs != 1 else "")
    ngrams = "; then an n-gram model on every review, averaged with it" if r.ngram_ensemble else ""
    return (
        f"reward stage: training {what} on {r.backbone} ({weights}) with {rows} of {r.dataset}: up to "
        f"{steps} steps ({epochs} in batches of {r.train_batch_size}){ngrams}; held-out accuracy on {held} is "
        "measured after the last step (and before the first, where the backbone's own head is trained on)"
    )


def save_reward_model(model, tokenizer, method: str, id2label: dict[int, str], directory: Path) -> Path:
    """method=full: a plain checkpoint; method=lora: adapter + labels.json (see load_classifier)."""
    model.save_pretrained(str(directory))
    tokenizer.save_pretrained(str(directory))
    if method == "lora":
        (directory / "labels.json").write_text(json.dumps({str(k): v for k, v in id2label.items()}))
    return directory


def fit(model, r: RewardConfig, rows: int, seed: int, loss_of: Callable[[list[int]], torch.Tensor]) -> Iterator[dict]:
    """The optimizer loop both objectives share: reward.epochs seeded passes over `rows` training
    rows in reward.train_batch_size steps, AdamW, linear warmup then decay, gradient clipping.
    Yields one record per optimizer step."""
    from transformers import get_linear_schedule_with_warmup

    params = [p for p in model.parameters() if p.requires_grad]
    steps = r.epochs * -(-rows // r.train_batch_size)
    optimizer = torch.optim.AdamW(params, lr=r.lr, weight_decay=0.01)
    schedule = get_linear_schedule_with_warmup(optimizer, int(WARMUP_FRACTION * steps), steps)
    step, start = 0, time.perf_counter()
    for _, order in zip(range(r.epochs), seeds.permutations(rows, seed)):
        for i in range(0, len(order), r.train_batch_size):
            model.train()
            loss = loss_of(order[i : i + r.train_batch_size])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            yield {
                "step": step,
                "loss": loss.item(),
                "lr": schedule.get_last_lr()[0],
                "elapsed_s": round(time.perf_counter() - start, 2),
            }


def train_reward(cfg: Config) -> Iterator[tuple[str, dict]]:
    """Ray task body: yields ("info", line) for what it does before its first step, ("step", record)
    per optimizer step, then ("done", {files, metrics})."""
    from transformers import AutoTokenizer

    r, seed = cfg.reward.resolved(), cfg.run.seed
    prepare_worker(seed, cfg.cluster.torch_threads)
    if r.backbone == NGRAM_BACKBONE:
        yield from train_ngrams(r, seed)
        return
    device = role_device(cfg.cluster.scorer_gpus)
    backbone = resolve_model(r.backbone, cfg.cache_dir())
    objective = OBJECTIVES[r.objective](r, seed)
    tokenizer = AutoTokenizer.from_pretrained(backbone)
    # Keep a long text's END: reviews state their verdict last ("tail" beats "head" truncation on
    # IMDB, Sun et al. 2019), and a pair's two texts differ in the response, after the prompt.
    # Saved with the tokenizer, so the scorer truncates the same side.
    tokenizer.truncation_side = "left"
    model, head = build_reward_model(cfg, backbone, device, objective.labels)
    if head:
        yield "info", head_line(r, len(objective.labels), head)
    if tokenizer.pad_token is None:  # a decoder backbone: pad with EOS, the head pools the last real token
        tokenizer.pad_token = tokenizer.eos_token
        model.config.pad_token_id = tokenizer.pad_token_id
    before = None  # a fresh head is at chance by construction: scoring the held-out set would only say so
    if not head:  # the backbone's own head: how good it already is, so the user sees what training adds
        t0 = time.perf_counter()
        before = objective.evaluate(model, tokenizer, r, device)["accuracy"]
        yield (
            "info",
            (
                f"reward stage: held-out accuracy before training {before:.3f} "
                f"({objective.eval_size()} scored in {time.perf_counter() - t0:.0f} s); training"
            ),
        )
    start, step = time.perf_counter(), 0
    loss_of = functools.partial(objective.loss, model, tokenizer, max_length=r.train_max_length, device=device)
    for record in fit(model, r, len(objective), seed, loss_of):
        step = record["step"]
        yield "step", record
    train_s = time.perf_counter() - start
    if r.ngram_ensemble:
        yield "info", "reward stage: fitting the n-gram model the encoder's margins are averaged with"
        objective.fit_ngrams(r, seed)
        train_s = time.perf_counter() - start
    after = objective.evaluate(model, tokenizer, r, device, openings=True)
    with tempfile.TemporaryDirectory() as tmp:
        save_reward_model(model, tokenizer, r.method, objective.labels, Path(tmp))
        if r.ngram_ensemble:  # the classifier objective only (config checks)
            objective.ngrams.save(Path(tmp, ENSEMBLE_DIR))
        files = read_dir(Path(tmp))
    metrics = {
        "objective": r.objective,
        "accuracy_before": before,
        **after,
        "method": r.method,
        "steps": step,
        "train_size": len(objective),
        "eval_size": objective.eval_size(),
        "train_s": round(train_s, 1),
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        **objective.report,
    }
    yield "done", {"files": files, "metrics": metrics}


def train_ngrams(r: RewardConfig, seed: int) -> Iterator[tuple[str, dict]]:
    """reward.backbone=ngrams: rlhf_ray.rewards.ngrams on every training review (one "step": the fit is
    full-batch and takes seconds), the same held-out figures as the encoder's."""
    objective = ClassifierObjective(r, seed)
    start = time.perf_counter()
    model, loss = train_nb_logistic(objective.texts, objective.targets)
    train_s = time.perf_counter() - start
    yield "step", {"step": 1, "loss": loss, "elapsed_s": round(train_s, 2)}
    held = objective.eval_texts
    after = classifier_figures(model.logits(held), objective.eval_targets)
    after["opening_accuracy"] = classifier_figures(model.logits([opening(t) for t in held]), objective.eval_targets)[
        "accuracy"
    ]
    with tempfile.TemporaryDirectory() as tmp:
        files = read_dir(model.save(Path(tmp)))
    metrics = {
        "objective": "classifier",
        "accuracy_before": 0.5,  # w = 0: every review sits on the boundary
        **after,
        "method": NGRAM_BACKBONE,
        "steps": 1,
        "train_size": len(objective),
        "eval_size": objective.eval_size(),
        "train_s": round(train_s, 1),
        "trainable_params": len(model.vocab) + 1,
    }
    yield "done", {"files": files, "metrics": metrics}


def check(cfg: Config) -> None:
    """A user's pair set read on the driver before Ray starts: missing columns, non-text values and a set
    left empty fail here in one line. (imdb-pairs is built from the embedded reviews: nothing to check.)"""
    r = cfg.reward.resolved()
    if r.objective == "pairwise" and r.dataset != IMDB_PAIRS:
        load_pairs(r.dataset, r.train_size, r.eval_size, cfg.run.seed)


def run(cfg: Config, run_dir: Path, resume: bool = False) -> dict:
    if (done := begin(run_dir, resume)) is not None:
        return done
    start = time.perf_counter()
    r = cfg.reward.resolved()
    options = {"num_gpus": cfg.cluster.scorer_gpus, "num_cpus": cfg.cluster.actor_cpus}
    if r.backbone == NGRAM_BACKBONE:
        steps = 1
        log.info(
            "reward stage: training the n-gram sentiment classifier (unigrams + bigrams, NB-weighted logistic "
            "regression) on every labelled review of %s; held-out accuracy on every held-out review",
            r.dataset,
        )
    else:
        steps = r.epochs * -(-r.train_size // r.train_batch_size)  # upper bound: the split may hold fewer rows
        log.info(plan_line(r, steps))
    result = stream_task(
        cfg.cluster, train_reward, options, (cfg,), total=steps, desc="reward", jsonl=run_dir / "metrics.jsonl"
    )
    model_dir = write_dir(result["files"], run_dir / "model")
    m = result["metrics"]
    what = "pairwise accuracy" if r.objective == "pairwise" else "accuracy"
    openings = f" ({m['opening_accuracy']:.3f} on openings)" if "opening_accuracy" in m else ""
    if "encoder_accuracy" in m:
        openings += f"; the encoder alone {m['encoder_accuracy']:.3f} ({m['encoder_opening_accuracy']:.3f})"
    before = "chance" if m["accuracy_before"] is None else f"{m['accuracy_before']:.3f}"
    log.info(
        "reward: held-out %s %s -> %.3f%s; %s model in %s",
        what,
        before,
        m["accuracy"],
        openings,
        r.objective,
        model_dir,
    )
    return finish(
        run_dir, {"stage": "reward", "model": str(model_dir), **m, "wall_s": round(time.perf_counter() - start, 1)}
    )
