"""What batching the learning of several runs into one pass could save on this machine: the learner's
forward + backward (SmolLM2-135M 8-bit + LoRA, dequant cache, train-mode numerics, `response_stats` as
the learner calls it) over 16, 32 and 64 rows of the main job's length, in ms per row. A sweep of N
runs that learned in one pass would run N x 16 rows where it now runs N passes of 16 (issue 29).

    .venv/bin/python benchmarks/rows_per_pass.py --repeats 3"""

from __future__ import annotations

import argparse
import json
import time

import torch

from rlhf_ray.actors.common import load_policy
from rlhf_ray.config.load import load_config
from rlhf_ray.models.assets import resolve_model
from rlhf_ray.models.dequant import dequantized_int8
from rlhf_ray.models.forward import response_stats
from rlhf_ray.models.policy import ppo_numerics


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[16, 32, 64])
    ap.add_argument("--prompt-tokens", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    cfg = load_config("configs/default.yaml")
    torch.set_num_threads(cfg.cluster.torch_threads or torch.get_num_threads())
    model = ppo_numerics(load_policy(cfg, resolve_model(cfg.model.policy, cfg.cache_dir()), "cpu"))
    width = args.prompt_tokens + args.new_tokens
    out = {}
    with dequantized_int8(model, True):
        for rows in args.rows:
            ids = torch.randint(100, 5000, (rows, width), generator=torch.Generator().manual_seed(rows))

            def step(ids=ids):
                stats = response_stats(
                    model, ids, torch.ones_like(ids), args.prompt_tokens, with_entropy=True, entropy_grad=False
                )
                stats.logprobs.sum().backward()

            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                step()
                times.append(time.perf_counter() - start)
            best = min(times)
            out[rows] = {"s": round(best, 3), "ms_per_row": round(1000 * best / rows, 1)}
            print(json.dumps({"rows": rows, **out[rows]}), flush=True)
    first = min(out)
    ratios = {r: round(v["ms_per_row"] / out[first]["ms_per_row"], 3) for r, v in out.items()}
    print(json.dumps({"ms_per_row_vs_fewest": ratios}))


if __name__ == "__main__":
    main()
