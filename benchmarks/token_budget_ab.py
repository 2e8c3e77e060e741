"""A/B of ppo.micro_batch_tokens on a learner update with mixed response lengths (SmolLM2-135M 8-bit +
LoRA, the default config's learner: GAE, 4 epochs of 2 mini-batches). One rollout is sampled, its
responses are cut at spread-out lengths (as EOS would cut them), and two learners, padded and
token-budget, run `learn` on it in turn, so machine noise hits both alike. Prints the median seconds
of each and the largest difference of the reported loss metrics.

    .venv/bin/python benchmarks/token_budget_ab.py --rows 16 --new-tokens 48 --budget 256 --repeats 3"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from rlhf_ray.actors.generator import Generator
from rlhf_ray.actors.learner import Learner
from rlhf_ray.config.load import load_config
from rlhf_ray.models.assets import resolve_model

PROMPTS = ["This movie was", "I did not expect", "The actors", "Honestly, the plot", "What a", "Two hours"]
KEYS = ("policy/loss", "policy/approx_kl", "kl/mean", "value/loss", "policy/grad_norm")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=48)
    ap.add_argument("--budget", type=int, default=256, help="ppo.micro_batch_tokens of the B side")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    base = [f"ppo.batch_size={args.rows}", f"generate.max_new_tokens={args.new_tokens}"]
    cfg = load_config("configs/default.yaml", base)
    path = resolve_model(cfg.model.policy, cfg.cache_dir())
    learners = {
        "padded": Learner(cfg, path),
        "token_budget": Learner(
            load_config("configs/default.yaml", [*base, f"ppo.micro_batch_tokens={args.budget}"]), path
        ),
    }
    gen = Generator(cfg, path)
    gen.load_adapter(learners["padded"].adapter())
    rollout, _ = gen.generate([PROMPTS[i % len(PROMPTS)] for i in range(args.rows)], iteration=1)
    order = torch.randperm(args.rows, generator=torch.Generator().manual_seed(0))
    keep = torch.linspace(2, args.new_tokens, args.rows).round().long()[order]
    for row, n in enumerate(keep.tolist()):
        rollout.response_mask[row, n:] = 0
        rollout.response_ids[row, n:] = gen.tokenizer.pad_token_id
    scores = torch.linspace(-1.0, 2.0, args.rows)
    timings: dict[str, list[float]] = {name: [] for name in learners}
    metrics = {}
    for _ in range(args.repeats):
        for name, learner in learners.items():  # each learns the same batch from its own fresh state
            state = learner.checkpoint()
            t0 = time.perf_counter()
            metrics[name], _ = learner.learn([rollout], [scores], iteration=1)
            timings[name].append(time.perf_counter() - t0)
            learner.restore(state)
    med = {k: statistics.median(v) for k, v in timings.items()}
    diff = max(abs(metrics["padded"][k] - metrics["token_budget"][k]) for k in KEYS if k in metrics["padded"])
    print(json.dumps({"response_tokens": int(keep.sum()), "padded_tokens": args.rows * args.new_tokens,
                      "medians_s": med, "speedup": med["padded"] / med["token_budget"],
                      "max_metric_difference": diff}))  # fmt: skip


if __name__ == "__main__":
    main()
