"""Sequence-classification reward model: one scalar score per text, batched, truncated."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from rlhf_ray.config.schema import PROBABILITY_SCORES
from rlhf_ray.errors import NonFiniteError, UserError
from rlhf_ray.models.loading import load_with_head
from rlhf_ray.models.policy import load_kwargs, quiet_warnings
from rlhf_ray.rewards.ngrams import ENSEMBLE_DIR, NgramClassifier, blend, is_ngram_model

# Classification heads stay in full precision: they are tiny and their outputs are the reward.
HEAD_MODULES = ["classifier", "score", "pooler"]


def positive_index(config) -> int:
    """The label that means 'positive' (by name if the checkpoint says, else index 1)."""
    for idx, name in (config.id2label or {}).items():
        if str(name).lower().startswith("pos"):
            return int(idx)
    return 1


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def trained_dtype(path: str | Path) -> torch.dtype:
    """The dtype a checkpoint's config.json records ("dtype", or "torch_dtype" before transformers 5):
    its scores are those of that dtype. float32 when the config says nothing (or is not a local file)."""
    config = Path(path) / "config.json"
    if not config.is_file():
        return torch.float32
    fields = json.loads(config.read_text())
    return DTYPES.get(str(fields.get("dtype") or fields.get("torch_dtype") or "float32"), torch.float32)


def load_classifier(path: str, quant: str = "none", device: str = "cpu"):
    """A classifier checkpoint, or a peft adapter directory on top of one (LoRA-trained).

    On a GPU it runs in the dtype it was trained in (fp32 unless its config says otherwise: a
    reward trained in fp32 scores differently in bf16); on a CPU always in fp32."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    quiet_warnings()
    root = Path(path)
    adapter_cfg = root / "adapter_config.json"
    base_path = json.loads(adapter_cfg.read_text())["base_model_name_or_path"] if adapter_cfg.exists() else path
    dtype = trained_dtype(base_path) if device == "cuda" else torch.float32
    kwargs = load_kwargs(quant, device, HEAD_MODULES, dtype)
    if adapter_cfg.exists():
        from peft import PeftModel

        labels = json.loads((root / "labels.json").read_text()) if (root / "labels.json").exists() else {}
        # The trained head comes with the adapter (modules_to_save): a head of another size in the
        # base (a 2-label classifier under a scalar reward model) is replaced, not an error, and
        # transformers' report of the base's missing head is held back (any other key still shows).
        base, _ = load_with_head(
            AutoModelForSequenceClassification,
            base_path,
            HEAD_MODULES,
            num_labels=len(labels) or 2,
            id2label=labels or None,
            ignore_mismatched_sizes=True,
            **kwargs,
        )
        model = PeftModel.from_pretrained(base, str(root))
    else:
        model = AutoModelForSequenceClassification.from_pretrained(path, **kwargs)
    model.eval()
    return model, AutoTokenizer.from_pretrained(path)


class RewardModel:
    """Scores texts with a classifier: `logit_margin` (positive logit minus the best other), `prob` (of
    the positive label) or `log_prob` (its log)."""

    def __init__(
        self,
        path: str,
        score: str = "logit_margin",
        quant: str = "none",
        device: str = "cpu",
        batch_size: int = 32,
        max_length: int = 256,
    ):
        if is_ngram_model(path):  # reward.backbone=ngrams: a linear model of the text's n-grams, no tokenizer
            self.model, self.tokenizer = NgramClassifier.load(path), None
        else:
            self.model, self.tokenizer = load_classifier(path, quant, device)
        if self.tokenizer is not None and self.tokenizer.pad_token is None:
            # decoder reward models (Llama-style) often ship without one: batches need padding, and the
            # head reads the last token that is not padding
            self.tokenizer.pad_token = self.tokenizer.eos_token
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        # reward.ngram_ensemble: an n-gram model beside the encoder, the two margins averaged
        self.ngrams = (
            NgramClassifier.load(Path(path, ENSEMBLE_DIR)) if is_ngram_model(Path(path, ENSEMBLE_DIR)) else None
        )
        self.score_kind, self.device = score, device
        self.batch_size, self.max_length = batch_size, max_length
        config = self.model.config
        self.pos = positive_index(config)
        if self.ngrams is not None and config.num_labels != 2:
            raise UserError(
                f"{path}: an n-gram model ({ENSEMBLE_DIR}/) beside a {config.num_labels}-label classifier; "
                "the ensemble averages two sentiment margins: remove the directory or use a 2-label model"
            )
        if config.num_labels < 2 and score in PROBABILITY_SCORES:
            raise UserError(f"reward.score={score} needs a classifier with >= 2 labels; use logit_margin")

    @torch.no_grad()
    def score(self, texts: list[str]) -> torch.Tensor:
        """Shapes: B texts -> (B,) float32 scores."""
        step = self.batch_size
        out = [self._reduce(self._logits(texts[i : i + step])) for i in range(0, len(texts), step)]
        scores = torch.cat(out).cpu() if out else torch.zeros(0)
        bad = (~torch.isfinite(scores)).nonzero().flatten().tolist()
        if bad:
            raise NonFiniteError(
                f"reward model returned non-finite scores for {len(bad)} text(s), e.g. {texts[bad[0]][:60]!r}: "
                "check reward.model (a broken or fp16-overflowing classifier)"
            )
        return scores

    def _logits(self, texts: list[str]) -> torch.Tensor:
        """(b, num_labels) float32."""
        if self.tokenizer is None:
            return self.model.logits(texts)
        enc = self.tokenizer(texts, return_tensors="pt", padding=True, truncation=True, max_length=self.max_length).to(
            self.device
        )
        logits = self.model(**enc).logits.float()
        return logits if self.ngrams is None else blend(logits, self.ngrams.margin(texts), self.pos)

    def _reduce(self, logits: torch.Tensor) -> torch.Tensor:
        if logits.shape[-1] == 1:
            return logits[:, 0]
        if self.score_kind == "prob":
            return logits.softmax(-1)[:, self.pos]
        if self.score_kind == "log_prob":
            return logits.log_softmax(-1)[:, self.pos]
        others = torch.cat([logits[:, : self.pos], logits[:, self.pos + 1 :]], dim=-1)
        return logits[:, self.pos] - others.max(dim=-1).values
