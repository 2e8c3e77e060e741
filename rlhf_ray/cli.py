"""`rlhf-ray` console entry point: one subcommand per stage, all sharing one typed config."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
import time
from pathlib import Path

from rlhf_ray.config import Config, load_config, save_config
from rlhf_ray.errors import UserError, user_message

STAGES = {
    "ppo": "PPO: Ray actors generate, score and learn (the main job)",
    "sft": "fine-tune a LoRA on a frozen quantized base as a causal LM (recipe step 1)",
    "merge": "fold an adapter into full-precision base weights and save (recipe step 2)",
    "reward": "train the sentiment reward classifier (recipe step 2b)",
    "pipeline": "sft -> merge -> reward -> ppo, skipping stages whose output exists",
}


PLAN_HELP = "memory plan: bytes per role for the separate and fused layouts (no weights loaded), plan.json"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rlhf-ray",
        description="RLHF (PPO) with quantized LoRA models on Ray. "
        "Every subcommand takes --config, --run-dir and dotted overrides like ppo.lr=1e-4.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text in {**STAGES, "config": "print the resolved config (after overrides) and exit"}.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--config", help="YAML config file (defaults are built in)")
        p.add_argument("--run-dir", help="output directory (default: runs/<command>-<time>)")
        if name in ("ppo", "pipeline"):
            p.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its latest checkpoint")
        p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted config overrides")
    p = sub.add_parser("plan", help=PLAN_HELP, description=PLAN_HELP)
    p.add_argument("--config", help="YAML config file (defaults are built in)")
    p.add_argument("--gpu-memory-gb", type=float, help="plan for one GPU of this size (default: the config's device)")
    p.add_argument("--out", default="plan.json", help="where to write the plan as JSON (default: plan.json)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted config overrides")
    return parser


def _plan(cfg: Config, args: argparse.Namespace) -> int:
    from rlhf_ray.plan import choose_layout, format_plan, make_plan

    plan = make_plan(cfg, args.gpu_memory_gb, choose=False)
    try:
        plan.chosen = choose_layout(plan, cfg.cluster.layout, cfg.cluster.num_generators)
    finally:  # the table and plan.json also when nothing fits (then the one-line refusal follows)
        Path(args.out).write_text(json.dumps(plan.to_json(), indent=2))
        print(format_plan(plan))
    return 0


def _run_dir(args: argparse.Namespace) -> Path:
    if getattr(args, "resume", None):
        if args.run_dir and Path(args.run_dir).resolve() != Path(args.resume).resolve():
            raise UserError("--resume RUN_DIR already names the run directory: drop --run-dir")
        path = Path(args.resume)
        if not path.is_dir():
            raise UserError(f"--resume {path}: no such run directory")
        return path
    return Path(args.run_dir or f"runs/{args.command}-{time.strftime('%Y%m%d-%H%M%S')}")


def _load(args: argparse.Namespace) -> Config:
    resume = getattr(args, "resume", None)
    if resume and not args.config and (Path(resume) / "config.yaml").exists():
        # A resumed run keeps its own resolved config; overrides still apply on top.
        return load_config(Path(resume) / "config.yaml", args.overrides)
    return load_config(args.config, args.overrides)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = _load(args)
        logging.basicConfig(
            level=cfg.run.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
        if args.command == "config":
            print(json.dumps(cfg.to_dict(), indent=2))
            return 0
        if args.command == "plan":
            return _plan(cfg, args)
        run_dir = _run_dir(args)
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
        stage = importlib.import_module(f"rlhf_ray.stages.{args.command}")
        result = stage.run(cfg, run_dir, resume=bool(getattr(args, "resume", None)))
    except UserError as exc:
        print(f"rlhf-ray: error: {user_message(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rlhf-ray: interrupted; the last checkpoint is kept (continue with --resume)", file=sys.stderr)
        return 130
    print(json.dumps({"run_dir": str(run_dir), **result}, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
