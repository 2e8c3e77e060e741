"""A/B of ppo.micro_batch_tokens on a learner update with mixed response lengths (SmolLM2-135M 8-bit +
LoRA, the default config's learner: GAE, its epochs, 2 mini-batches of the rows). One rollout is sampled, its
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
    # 2 mini-batches of the rows whatever --rows is (the default config's are 2 of 32)
    base = [
        f"ppo.batch_size={args.rows}",
        f"ppo.mini_batch_size={args.rows // 2}",
        f"generate.max_new_tokens={args.new_tokens}",
    ]
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
    timings, metrics = learn_in_turn(learners, rollout, scores, args.repeats)
    med = {k: statistics.median(v) for k, v in timings.items()}
    last = {name: runs[-1] for name, runs in metrics.items()}
    diff = max(abs(last["padded"][k] - last["token_budget"][k]) for k in KEYS if k in last["padded"])
    print(json.dumps({"response_tokens": int(keep.sum()), "padded_tokens": args.rows * args.new_tokens,
                      "medians_s": med, "speedup": med["padded"] / med["token_budget"],
                      "max_metric_difference": diff}))  # fmt: skip


def learn_in_turn(
    learners: dict, rollout, scores, repeats: int
) -> tuple[dict[str, list[float]], dict[str, list[dict]]]:
    """Each learner learns the same batch from its own fresh state, in turn (A B A B), `repeats` times:
    the seconds of every learn and the metrics of every learn, per learner (trunk_ab.py uses it too)."""
    timings: dict[str, list[float]] = {name: [] for name in learners}
    metrics: dict[str, list[dict]] = {name: [] for name in learners}
    for _ in range(repeats):
        for name, learner in learners.items():
            state = learner.checkpoint()
            t0 = time.perf_counter()
            metrics[name].append(learner.learn([rollout], [scores], iteration=1)[0])
            timings[name].append(time.perf_counter() - t0)
            learner.restore(state)
    return timings, metrics


if __name__ == "__main__":
    main()
