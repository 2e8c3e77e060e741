"""Calibrate a multi-turn task on the reference policy (the base with a fresh, zero LoRA) before
training: success rate, turns, tool calls and stop reasons over held-out episodes, in process (no Ray),
and the generator's seconds per policy token.

    .venv/bin/python benchmarks/env_calibration.py --config configs/calculator.yaml [--n 64] [key=value ...]

Success: the `accuracy` function (exact_answer) where rows have an `answer`, else the environment's
reward. A single-turn config (no env.*) reports its accuracy and seconds per policy token too: the
baseline for the cost of turns."""

from __future__ import annotations

import argparse
import collections
import time

from rlhf_ray.actors.generator import Generator
from rlhf_ray.config.load import load_config
from rlhf_ray.envs.runner import env_spec
from rlhf_ray.models.adapter import export_adapter
from rlhf_ray.models.assets import resolve_model
from rlhf_ray.process import install_log_filters
from rlhf_ray.rewards.arithmetic import exact_answer
from rlhf_ray.tools.evaluate import heldout_prompts


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", required=True)
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    install_log_filters()
    cfg = load_config(args.config, args.overrides)
    cfg.algo.advantage = "gae"  # one episode per held-out prompt (samples_per_prompt 1), nothing trained
    policy = resolve_model(cfg.model.policy, cfg.cache_dir())
    gen = Generator(cfg, policy, env=env_spec(cfg))
    gen.load_adapter(export_adapter(gen.model, 0))  # a fresh LoRA: the reference policy
    prompts = heldout_prompts(cfg, gen.tokenizer)[: args.n]
    t0 = time.perf_counter()
    rollout, _ = gen.generate(prompts, iteration=1)
    seconds = time.perf_counter() - t0
    eps = rollout.episodes
    actions = int(rollout.loss_mask.sum())
    per_token = f"{seconds:.1f} s, {actions} policy tokens ({seconds / max(actions, 1) * 1000:.1f} ms per policy token)"
    if eps is None:  # single-turn: the baseline
        wins = exact_answer(None, rollout.responses, rollout.columns["answer"]) if "answer" in rollout.columns else []
        print(f"{args.config}: single-turn, accuracy {sum(wins) / max(len(wins), 1):.3f}; {per_token}")
        return
    if "answer" in rollout.columns:
        wins = exact_answer(None, [e.messages for e in eps], rollout.columns["answer"])
    else:
        wins = [e.reward or 0.0 for e in eps]
    print(f"{args.config}: success {sum(wins) / len(wins):.3f} over {len(eps)} held-out episodes")
    print(
        f"turns {sum(e.turns for e in eps) / len(eps):.2f}, "
        f"tool calls {sum(e.tool_calls for e in eps) / len(eps):.2f}, "
        f"stops {dict(collections.Counter(e.stop for e in eps))}"
    )
    print(f"{per_token}, {int(rollout.response_mask.sum()) - actions} observation tokens")
    for e in eps[:3]:
        print("---", e.stop, e.reward)
        for m in e.messages:
            print(f"  [{m['role']}] {m['content']!r}")


if __name__ == "__main__":
    main()
