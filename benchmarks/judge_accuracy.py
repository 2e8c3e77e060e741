"""Held-out accuracy of a sentiment judge (a reward function, e.g. the default eval judge VADER) on the
IMDB reviews PPO never sees (the test side of the project's 90/10 split), on whole reviews and on
openings of the length PPO scores: the first 4-8 SmolLM2 tokens (a prompt) plus the next N tokens of
the same review (standing in for N new tokens), each labelled with its whole review's label. Openings'
labels are noisier (a review's first 30 tokens often say nothing of its verdict): `--classifier DIR`
scores the same texts with a trained classifier (e.g. the reward stage's output) for comparison.

    .venv/bin/python benchmarks/judge_accuracy.py --function rlhf_ray.rewards.lexicon:vader --threshold 0.05"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

from rlhf_ray.data.prompts import load_text_dataset
from rlhf_ray.models.assets import resolve_model
from rlhf_ray.models.policy import load_tokenizer
from rlhf_ray.rewards.base import RewardBatch
from rlhf_ray.rewards.functions import call, function_ref, load_function
from rlhf_ray.store.refs import cache_root


def accuracy(scores: list[float], labels: list[int], threshold: float) -> float:
    return sum((s > threshold) == bool(y) for s, y in zip(scores, labels)) / len(labels)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--function", default="rlhf_ray.rewards.lexicon:vader", help="judge: module:function or file.py:fn")
    ap.add_argument("--threshold", type=float, default=0.05, help="a score above it counts as positive")
    ap.add_argument("--rows", type=int, default=0, help="held-out reviews to use (0 = all)")
    ap.add_argument("--new-tokens", type=int, nargs="+", default=[20, 32], help="tokens after the 4-8-token opening")
    ap.add_argument("--classifier", help="a trained classifier directory to score the same texts, for comparison")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    cache = cache_root(None)
    table = load_text_dataset("imdb", "test").to_pydict()
    texts, labels = table["text"], [int(y) for y in table["label"]]
    rng = random.Random(args.seed)
    if args.rows:
        keep = sorted(rng.sample(range(len(texts)), min(args.rows, len(texts))))
        texts, labels = [texts[i] for i in keep], [labels[i] for i in keep]
    tok = load_tokenizer(resolve_model("smollm2-135m-instruct", cache))
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    prompt_lengths = [rng.randint(4, 8) for _ in texts]
    sets = {"whole reviews": texts}
    for n in args.new_tokens:
        sets[f"openings (4-8 + {n} tokens)"] = [tok.decode(t[: k + n]) for t, k in zip(ids, prompt_lengths)]
    fn = load_function(function_ref("--function", args.function), Path(cache))
    scorer = None
    if args.classifier:
        from rlhf_ray.rewards.classifier import RewardModel

        scorer = RewardModel(args.classifier, score="log_prob", max_length=256)
    out = {"function": args.function, "threshold": args.threshold, "rows": len(texts)}
    out["positive_share"] = round(sum(labels) / len(labels), 3)
    for name, batch in sets.items():
        t0 = time.perf_counter()
        scores = call(fn, RewardBatch([""] * len(batch), batch))
        seconds = time.perf_counter() - t0
        sided = [(s, y) for s, y in zip(scores, labels) if abs(s) > args.threshold]
        row = {
            "accuracy": round(accuracy(scores, labels, args.threshold), 3),
            "judged_positive": round(sum(s > args.threshold for s in scores) / len(scores), 3),
            "zero_scores": round(sum(s == 0 for s in scores) / len(scores), 3),
            # where it takes a side (a score beyond +-threshold): how often, and how often rightly
            "decided": round(len(sided) / len(scores), 3),
            "accuracy_decided": round(accuracy([s for s, _ in sided], [y for _, y in sided], args.threshold), 3),
            "ms_per_text": round(1e3 * seconds / len(batch), 3),
        }
        if scorer is not None:
            logp = scorer.score(batch).tolist()
            row["classifier_accuracy"] = round(accuracy(logp, labels, math.log(0.5)), 3)
        out[name] = row
        print(json.dumps({name: row}), flush=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
