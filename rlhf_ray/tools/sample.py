"""`rlhf-ray generate`: continue prompts with the base policy, or with a trained adapter (a run
directory or checkpoint), using the same sampling code and settings as PPO's generator. With an
environment in the config (env.*), each prompt is played as an episode and its transcript printed,
observations marked by their role."""

from __future__ import annotations

from pathlib import Path

from rlhf_ray.envs.episodes import turn_of
from rlhf_ray.envs.runner import EnvRunner, env_spec
from rlhf_ray.errors import UserError
from rlhf_ray.models.generate import sample
from rlhf_ray.store import seeds
from rlhf_ray.tools.runs import find_adapter, load_trained_policy, run_config


def add_arguments(parser) -> None:
    parser.add_argument(
        "--adapter",
        metavar="RUN_OR_CHECKPOINT",
        help="trained adapter: a run directory, checkpoint or peft adapter (default: the base policy)",
    )
    parser.add_argument("--prompt", action="append", default=[], help="a prompt (repeatable)")
    parser.add_argument("--prompts-file", help="a text file with one prompt per line")
    parser.add_argument("--samples", type=int, default=1, help="samples per prompt")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")
    parser.add_argument("--config", help="YAML config (default: the adapter's run config.yaml, else built-in)")
    parser.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. generate.temperature=1.0"
    )


def read_prompts(args) -> list[str]:
    prompts = list(args.prompt)
    if args.prompts_file:
        path = Path(args.prompts_file)
        if not path.is_file():
            raise UserError(f"--prompts-file {path}: no such file")
        try:  # UTF-8 whatever the locale says (a C/POSIX locale would read it as ASCII); a BOM is skipped
            text = path.read_text(encoding="utf-8-sig")
        except UnicodeDecodeError as exc:
            raise UserError(
                f"--prompts-file {path} is not valid UTF-8 (byte {exc.start}): re-save it as UTF-8"
            ) from None
        prompts += [line for line in text.splitlines() if line.strip()]
    if not prompts:
        raise UserError("no prompts: pass --prompt TEXT (repeatable) or --prompts-file FILE")
    if args.samples < 1:
        raise UserError(f"--samples must be >= 1; got {args.samples}")
    return prompts


def main(args) -> dict:

    prompts = read_prompts(args)
    adapter = find_adapter(args.adapter) if args.adapter else None
    cfg = run_config(adapter.run_dir if adapter else None, args.config, args.overrides)
    model, tokenizer = load_trained_policy(cfg, adapter)
    g, spec = cfg.generate, env_spec(cfg)
    if spec is None:
        rollout = sample(model, tokenizer, prompts, max_new_tokens=g.max_new_tokens, temperature=g.temperature,
                         group_size=args.samples, seed=args.seed)  # fmt: skip
    else:

        def sample_turn(contexts: list[list[int]], max_new_tokens: int, turn: int):
            turn_seed = seeds.turn_sampling(args.seed, turn)
            return turn_of(sample(model, tokenizer, contexts, max_new_tokens=max_new_tokens,
                                  temperature=g.temperature, seed=turn_seed))  # fmt: skip

        rollout = EnvRunner(spec, cfg, tokenizer).run(
            prompts, args.samples, [args.seed + i for i in range(len(prompts))], sample_turn, policy_version=0,
            temperature=g.temperature, with_ref=False,
        )  # fmt: skip
    for i, (prompt, response) in enumerate(zip(rollout.prompts, rollout.responses)):
        ending = f"\n[episode: {rollout.episodes[i].stop}, reward {rollout.episodes[i].reward}]" if spec else ""
        print(f"{prompt}{response}{ending}\n---")
    return {"adapter": str(adapter.path) if adapter else None, "samples": len(rollout)}
