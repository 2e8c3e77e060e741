"""A/B of model.dequant_cache on the generator's own sampling call and a learner-style forward +
backward (SmolLM2-135M 8-bit + LoRA, train-mode numerics), interleaved in one process so machine
noise hits both alike. Prints medians of `--repeats` timings and checks the outputs are identical.

    .venv/bin/python benchmarks/dequant_ab.py --prompts 16 --new-tokens 24 --repeats 3"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from rlhf_ray.actors.common import load_policy
from rlhf_ray.config.load import load_config
from rlhf_ray.models.assets import resolve_model
from rlhf_ray.models.dequant import dequantized_int8
from rlhf_ray.models.forward import response_stats
from rlhf_ray.models.generate import sample
from rlhf_ray.models.policy import load_tokenizer, ppo_numerics

PROMPTS = ["This movie was", "I did not expect", "The actors", "Honestly, the plot", "What a", "Two hours"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=24)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    cfg = load_config("configs/default.yaml")
    path = resolve_model(cfg.model.policy, cfg.cache_dir())
    tok = load_tokenizer(path)
    model = ppo_numerics(load_policy(cfg, path, "cpu"))
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(args.prompts)]
    timings: dict[str, list[float]] = {"generate": [], "generate+cache": [], "learn": [], "learn+cache": []}
    outputs = {}
    for _ in range(args.repeats):
        for cached in (False, True):
            suffix = "+cache" if cached else ""
            with dequantized_int8(model, enabled=cached):
                t0 = time.perf_counter()
                rollout = sample(model, tok, prompts, max_new_tokens=args.new_tokens, temperature=0.7, seed=1)
                t1 = time.perf_counter()
                out = response_stats(model, rollout.input_ids, rollout.attention_mask, rollout.prompt_ids.shape[1])
                out.logprobs.sum().backward()
                t2 = time.perf_counter()
            model.zero_grad(set_to_none=True)
            timings["generate" + suffix].append(t1 - t0)
            timings["learn" + suffix].append(t2 - t1)
            outputs[cached] = (rollout.response_ids, out.logprobs.detach())
    same = torch.equal(outputs[False][0], outputs[True][0]) and torch.equal(outputs[False][1], outputs[True][1])
    med = {k: statistics.median(v) for k, v in timings.items()}
    print(json.dumps({"medians_s": med, "identical": same,
                      "speedup": {"generate": med["generate"] / med["generate+cache"],
                                  "learn": med["learn"] / med["learn+cache"]}}))  # fmt: skip


if __name__ == "__main__":
    main()
