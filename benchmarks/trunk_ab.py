"""A/B of the frozen trunk (model.lora_layers: SmolLM2-135M 8-bit, LoRA in the top 15 of 30 layers, the
default config's 64 responses of 20 tokens).

- Sampling: the lean decode loop runs the bottom 15 layers on the policy rows only and copies their output
  to the reference rows (LeanDecoder.shared), against every layer on every row. The same seeded batch in
  turn, A B A B; prints the median seconds of each, their ratio, and whether the tokens were the same.
- Learning (2 epochs of 2 mini-batches): the bottom 15 layers run once per row and iteration
  (learner.TrunkCache) against every forward through all 30 layers. Two learners from the same fresh state
  learn one rollout in turn, A B A B; prints the median seconds of each, their ratio and the largest
  difference of the reported loss metrics.

    .venv/bin/python benchmarks/trunk_ab.py --repeats 5"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from token_budget_ab import learn_in_turn  # benchmarks/ is on sys.path when a script here runs

from rlhf_ray.actors.generator import Generator
from rlhf_ray.actors.learner import Learner
from rlhf_ray.config.load import load_config
from rlhf_ray.models.assets import resolve_model

PROMPTS = ["This movie was", "I did not expect", "The actors", "Honestly, the plot", "What a", "Two hours"]
KEYS = ("policy/loss", "policy/approx_kl", "kl/mean", "kl/loss", "value/loss", "policy/grad_norm")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    cfg = load_config("configs/default.yaml", [])
    path = resolve_model(cfg.model.policy, cfg.cache_dir())
    learners = {"all_layers": Learner(cfg, path), "trunk_once": Learner(cfg, path)}
    learners["all_layers"].trunk_depth = 0
    gen = Generator(cfg, path)
    gen.load_adapter(learners["trunk_once"].adapter())
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(cfg.ppo.batch_size)]
    rollout, _ = gen.generate(prompts, iteration=1)
    sampling = sampling_ab(gen, prompts, args.repeats)
    scores = rollout.response_mask.sum(1).float() / cfg.generate.max_new_tokens - 0.5
    timings, runs = learn_in_turn(learners, rollout, scores, args.repeats)
    phases = {k: [(m["time/experience_s"], m["time/update_s"]) for m in v] for k, v in runs.items()}
    metrics = {name: v[-1] for name, v in runs.items()}
    med = {k: round(statistics.median(v), 3) for k, v in timings.items()}
    split = {k: [round(statistics.median(p[i] for p in v), 3) for i in (0, 1)] for k, v in phases.items()}
    diff = max(abs(metrics["all_layers"][k] - metrics["trunk_once"][k]) for k in KEYS if k in metrics["all_layers"])
    print(json.dumps({"sampling": sampling, "learning": {"medians_s": med, "experience_update_s": split,
                      "ratio": round(med["trunk_once"] / med["all_layers"], 3),
                      "max_metric_difference": diff}}))  # fmt: skip


def sampling_ab(gen: Generator, prompts: list[str], repeats: int) -> dict:
    """The generator's lean loop with its shared bottom layers, and with every layer on every row."""
    decoder = gen.lean
    prepare = decoder.prepare
    shared_depth = {}

    def every_layer(rows, adapters=None):
        prepare(rows, adapters)
        shared_depth["all_layers"] = decoder.shared
        decoder.shared = 0

    timings: dict[str, list[float]] = {"all_layers": [], "trunk_shared": []}
    tokens = {}
    for _ in range(repeats):
        for name in timings:
            decoder.prepare = every_layer if name == "all_layers" else prepare
            t0 = time.perf_counter()
            rollout, _ = gen.generate(prompts, iteration=2)  # the same seed: the same draws
            timings[name].append(time.perf_counter() - t0)
            tokens[name] = rollout.response_ids
    decoder.prepare = prepare
    med = {k: round(statistics.median(v), 3) for k, v in timings.items()}
    return {"medians_s": med, "ratio": round(med["trunk_shared"] / med["all_layers"], 3),
            "shared_layers": shared_depth["all_layers"],
            "same_tokens": bool((tokens["all_layers"] == tokens["trunk_shared"]).all())}  # fmt: skip


if __name__ == "__main__":
    main()
