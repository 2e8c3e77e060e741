"""A bag-of-n-grams sentiment classifier: logistic regression on binary word unigram + bigram features
scaled by their naive-Bayes log-count ratios ("NBSVM", Wang & Manning 2012, ACL: 91.2% on IMDB with
bigrams). `reward.backbone: ngrams` trains it in the reward stage (seconds on 2 cores, on every
training review) and the scorer reads it as any classifier: logits (B, 2) = [0, z], so `log_prob` is
log sigmoid(z).

Why beside the MiniLM encoder: on 2 cores the encoder sees ~1,600 reviews in the reward stage's
minutes and reaches ~0.83 held-out accuracy; this model sees all 22,521 in seconds and reaches
~0.92 (docs/benchmarks.md). Its files: ngrams.json (the n-gram vocabulary and how texts are cut)
and ngrams.safetensors (one weight per n-gram and the bias)."""

from __future__ import annotations

import json
import re
import warnings
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import torch
from safetensors.torch import load_file, save_file

from rlhf_ray.errors import UserError
from rlhf_ray.store.refs import NGRAM_FILE

CONFIG_FILE, WEIGHTS_FILE = NGRAM_FILE, "ngrams.safetensors"
# Words (with an inner apostrophe: "don't") and the two punctuation marks that carry sentiment.
TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z]+)?|[!?]")
ID2LABEL = {0: "negative", 1: "positive"}
# reward.ngram_ensemble: the subdirectory of a 2-label classifier's directory that holds the n-gram model
# averaged with it (RewardModel reads both).
ENSEMBLE_DIR = "ngrams"


def grams(text: str) -> set[str]:
    """The text's distinct unigrams and bigrams (lower-cased; IMDB's `<br />` line breaks are spaces)."""
    words = TOKEN.findall(text.replace("<br />", " ").lower())
    return set(words).union(f"{a} {b}" for a, b in zip(words, words[1:]))


def is_ngram_model(path: str | Path) -> bool:
    return Path(path, CONFIG_FILE).is_file()


class NgramClassifier:
    """z(text) = sum of the weights of the text's n-grams + bias; positive when z > 0."""

    def __init__(self, vocab: list[str], weight: torch.Tensor, bias: float):
        if len(vocab) != len(weight):
            raise ValueError(f"{len(vocab)} n-grams but {len(weight)} weights")
        self.vocab, self.weight, self.bias = vocab, weight.float(), float(bias)
        self.index = {g: i for i, g in enumerate(vocab)}
        # What RewardModel reads of a transformers classifier: two labels, which one is positive.
        self.config = SimpleNamespace(num_labels=2, id2label=dict(ID2LABEL))

    def features(self, texts: list[str]) -> torch.Tensor:
        """(B, V) sparse 0/1: which known n-grams each text holds."""
        return binary_features([grams(t) for t in texts], self.index)

    def margin(self, texts: list[str]) -> torch.Tensor:
        """(B,) z: the positive-minus-negative logit."""
        if not texts:
            return torch.zeros(0)
        return torch.sparse.mm(self.features(texts), self.weight[:, None])[:, 0] + self.bias

    def logits(self, texts: list[str]) -> torch.Tensor:
        """(B, 2) [0, z]: softmax gives sigmoid(z) to the positive label."""
        z = self.margin(texts)
        return torch.stack([torch.zeros_like(z), z], dim=1)

    def save(self, directory: Path) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        spec = {"kind": "nb-logistic", "token_pattern": TOKEN.pattern, "ngram_range": [1, 2], "vocab": self.vocab}
        (directory / CONFIG_FILE).write_text(json.dumps({"bias": self.bias, "id2label": ID2LABEL, **spec}))
        save_file({"weight": self.weight.contiguous()}, str(directory / WEIGHTS_FILE))
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> NgramClassifier:
        spec = json.loads(Path(directory, CONFIG_FILE).read_text())
        if spec.get("token_pattern") != TOKEN.pattern:
            raise ValueError(f"{directory}: saved with another tokenizer pattern; train it again")
        return cls(spec["vocab"], load_file(str(Path(directory, WEIGHTS_FILE)))["weight"], spec["bias"])


def blend(logits: torch.Tensor, z: torch.Tensor, pos: int) -> torch.Tensor:
    """A 2-label classifier's (B, 2) logits and an n-gram margin z (B,) -> (B, 2) logits whose
    positive-minus-negative margin is the mean of the two margins: the ensemble's log-odds are the mean
    of its members' (a geometric mean of their odds), so `prob` and `log_prob` read them as one classifier."""
    mean = (logits[:, pos] - logits[:, 1 - pos] + z.to(logits)) / 2
    out = torch.zeros_like(logits)
    out[:, pos] = mean
    return out


def binary_features(docs: list[set[str]], index: dict[str, int]) -> torch.Tensor:
    """(len(docs), len(index)) sparse COO 0/1, coalesced."""
    cols = [[index[g] for g in doc if g in index] for doc in docs]
    rows = torch.repeat_interleave(torch.arange(len(docs)), torch.tensor([len(c) for c in cols], dtype=torch.long))
    indices = torch.stack([rows, torch.tensor([j for c in cols for j in c], dtype=torch.long)])
    values = torch.ones(indices.shape[1])
    # built here from valid indices: torch's invariant check (and its warning when left implicit) is not needed
    return torch.sparse_coo_tensor(indices, values, (len(docs), len(index)), check_invariants=False).coalesce()


def train_nb_logistic(
    texts: list[str], labels: list[int], min_count: int = 3, epochs: int = 30, lr: float = 0.05
) -> tuple[NgramClassifier, float]:
    """-> (the classifier, its final training loss). Fit on 0/1 labels: n-grams seen in >= min_count
    texts; r = log-count ratio of each n-gram in positive vs negative texts (add-one smoothed); then
    full-batch Adam on the logistic loss of X @ (w * r) + b from w = 0 (every feature starts at its
    naive-Bayes weight's scale, so a few dozen steps fit). Deterministic: no sampling."""
    docs = [grams(t) for t in texts]
    counts = Counter(g for doc in docs for g in doc)
    vocab = sorted(g for g, c in counts.items() if c >= min_count)
    if not vocab or len(set(labels)) < 2:
        raise UserError(
            f"reward.dataset: {len(texts)} training reviews, labels {sorted(set(labels))}: reward.backbone=ngrams "
            f"needs both labels and words that recur in >= {min_count} reviews; use a larger labelled set"
        )
    index = {g: i for i, g in enumerate(vocab)}
    x = binary_features(docs, index)
    y = torch.tensor(labels, dtype=torch.float32)
    pos = torch.sparse.mm(x.t(), y[:, None])[:, 0] + 1
    neg = torch.sparse.mm(x.t(), (1 - y)[:, None])[:, 0] + 1
    ratio = (pos / pos.sum()).log() - (neg / neg.sum()).log()  # (V,) NB log-count ratio
    # Gradients by hand on CSR copies of X and X^T: the logistic loss's are X^T (sigmoid(z) - y) / N, and
    # autograd through torch.sparse.mm took ~20x longer on 2 cores (22,521 reviews: 11.7 s against 0.5 s).
    with warnings.catch_warnings():  # torch calls its CSR support beta on every conversion: noise here
        warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta", UserWarning)
        rows, cols = x.to_sparse_csr(), x.t().coalesce().to_sparse_csr()
    w, b = torch.zeros(len(vocab)), torch.zeros(1)
    w.grad, b.grad = torch.zeros_like(w), torch.zeros_like(b)
    optimizer = torch.optim.Adam([w, b], lr=lr)
    for _ in range(epochs):
        z = (rows @ (w * ratio)[:, None])[:, 0] + b
        err = (torch.sigmoid(z) - y) / len(y)
        w.grad.copy_((cols @ err[:, None])[:, 0] * ratio)
        b.grad.copy_(err.sum())
        optimizer.step()
    z = (rows @ (w * ratio)[:, None])[:, 0] + b
    loss = torch.nn.functional.binary_cross_entropy_with_logits(z, y)
    return NgramClassifier(vocab, w * ratio, float(b)), float(loss)
