"""`rlhf-ray` console entry point: one subcommand per stage, all sharing one typed config."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import logging
import os
import signal
import socket
import sys
import time
from pathlib import Path

from rlhf_ray.config.help import all_keys, explain, one_of, sections, suggest
from rlhf_ray.config.load import load_config, save_config
from rlhf_ray.config.schema import Config
from rlhf_ray.errors import UserError, user_message
from rlhf_ray.process import set_up_process
from rlhf_ray.runtime import rundir, stopping
from rlhf_ray.stages.common import DONE
from rlhf_ray.store.checkpoint import latest_checkpoint, read_json
from rlhf_ray.store.provenance import CONSOLE_LOG, ConsoleLog, collect, write_run_info

STAGES = {
    "ppo": "PPO: Ray actors generate, score and learn (the main job)",
    "sft": "fine-tune a LoRA on a frozen quantized base as a causal LM (recipe step 1)",
    "merge": "fold an adapter into full-precision base weights and save (recipe step 2)",
    "reward": "train the reward model: a sentiment classifier, or a scalar model from preference pairs "
    "(reward.objective=pairwise)",
    "pipeline": "sft -> merge -> reward -> ppo, skipping stages whose output exists",
    "bench": "time PPO through Ray vs in-process, generation, sync, phases, quantization modes",
}
# Commands that run from a module other than rlhf_ray.stages.<command>.
STAGE_MODULES = {"bench": "rlhf_ray.bench.harness"}
# Config sections each command reads (its --help lists their keys).
STAGE_SECTIONS = {
    "ppo": ["run", "model", "data", "generate", "reward", "algo", "ppo", "cluster"],
    "sft": ["run", "model", "sft", "cluster"],
    "merge": ["run", "model", "merge"],
    "reward": ["run", "reward", "cluster"],
    "pipeline": list(sections(Config)),
}
OPTIONS = (
    "--config",
    "--run-dir",
    "--resume",
    "--overwrite",
    "--explain",
    "--help",
    "--gpu-memory-gb",
    "--out",
    "--grid",
    "--runs",
)

log = logging.getLogger("rlhf_ray.cli")  # not "__main__" under python -m


def _keys_epilog(command: str) -> str:
    return (
        "config keys (set in the --config YAML file or override as KEY=VALUE; "
        "`rlhf-ray config --explain SECTION` shows one section):\n\n" + explain(Config, STAGE_SECTIONS[command])
    )


# Commands that read a finished run, and serve-reward (rlhf_ray.tools.<module>: add_arguments(parser),
# main(args)); they parse their own options. A tool's module (torch, transformers) is imported only
# when that tool runs, so `rlhf-ray config` and `--help` stay quick.
TOOLS = {
    "eval": ("evaluate", "score the trained policy vs its reference on held-out prompts (eval.json + Parquet)"),
    "generate": (
        "sample",
        "sample from the base policy or a trained adapter (run dir / checkpoint); prompts from args or a file",
    ),
    "report": ("report", "plots (metrics.png) and report.md for a PPO run directory"),
    "serve-reward": (
        "serve_reward",
        "serve the config's reward sources over HTTP (POST prompts/completions/columns -> rewards)",
    ),
}


PLAN_HELP = "memory plan: bytes per role for the separate and fused layouts (no weights loaded), plan.json"
SWEEP_HELP = (
    "many PPO/GRPO runs on ONE quantized base, each with its own LoRA adapter, value head and optimizer "
    "(one base per host: fused, or cluster.layout=separate with generator and learner hosts): DIR/<name>/ per "
    "run, DIR/sweep.json"
)
SWEEP_EPILOG = """examples:
  rlhf-ray sweep --config configs/smoke.yaml --run-dir runs/sw --grid 'ppo.lr=[1e-4,3e-4]' --grid 'run.seed=[0,1]'
  rlhf-ray sweep --config configs/smoke.yaml --run-dir runs/sw --runs runs.yaml   # {name: [KEY=VALUE, ...]}
  rlhf-ray sweep --resume runs/sw          # continue every run that is not done

Runs may differ in anything that leaves the base alone (learning rates, seeds, KL settings, the
advantage estimator, LoRA rank and targets, rewards, iterations, datasets). Keys that change the base,
its quantization, the tokenizer or the cluster (model.policy, model.quant, cluster.*, ...) are refused
in one line. Each run directory is a normal run: rlhf-ray eval / report / ppo --resume read it."""


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """Every command; the options of a tool, and the key list of a stage's --help, only when `command`
    is that tool or stage (the key lists cost a tenth of a second each)."""
    parser = argparse.ArgumentParser(
        prog="rlhf-ray",
        description="RLHF (PPO) with quantized LoRA models on Ray. Every subcommand takes --config, "
        "--run-dir and dotted overrides like ppo.lr=1e-4; try `rlhf-ray ppo --config configs/smoke.yaml` "
        "(the whole loop on tiny models in about a minute).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text in {
        **STAGES,
        "config": "print the resolved config (after overrides), or explain its keys",
    }.items():
        epilog = _keys_epilog(name) if name in STAGE_SECTIONS and name == command else None
        p = sub.add_parser(
            name,
            help=help_text,
            description=help_text,
            epilog=epilog,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.add_argument("--config", help="YAML config file (defaults are built in)")
        p.add_argument("--run-dir", help="output directory (default: runs/<command>-<time>)")
        if name in ("ppo", "pipeline"):
            p.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its latest checkpoint")
        if name != "config":
            p.add_argument("--overwrite", action="store_true", help="replace a run already in --run-dir")
        if name == "config":
            p.add_argument(
                "--explain",
                nargs="*",
                metavar="SECTION",
                help="list every key (type, default, meaning) of these sections or section.keys (all if none)",
            )
        p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted config overrides")
    for name, (module, help_text) in TOOLS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == command:
            importlib.import_module(f"rlhf_ray.tools.{module}").add_arguments(p)
    p = sub.add_parser(
        "sweep",
        help=SWEEP_HELP,
        description=SWEEP_HELP,
        epilog=SWEEP_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", help="YAML config file every run starts from (defaults are built in)")
    p.add_argument("--run-dir", help="the sweep's directory: DIR/sweep.json and one run directory per run")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=[V1,V2]", help="one axis of the grid")
    p.add_argument("--runs", metavar="FILE.yaml", help="named runs instead of a grid: {name: [KEY=VALUE, ...]}")
    p.add_argument("--resume", metavar="DIR", help="continue every run of this sweep that is not done")
    p.add_argument("--overwrite", action="store_true", help="replace a sweep already in --run-dir")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides for every run")
    p = sub.add_parser("plan", help=PLAN_HELP, description=PLAN_HELP)
    p.add_argument("--config", help="YAML config file (defaults are built in)")
    p.add_argument("--gpu-memory-gb", type=float, help="plan for one GPU of this size (default: the config's device)")
    p.add_argument("--out", default="plan.json", help="where to write the plan as JSON (default: plan.json)")
    p.add_argument(
        "--runs",
        type=int,
        metavar="N",
        help="plan a sweep of N runs of this config on one base (N adapters, optimizers, value heads, scorers)",
    )
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted config overrides")
    return parser


def _plan(cfg: Config, args: argparse.Namespace) -> int:
    # deferred like the stages and tools: the planner imports torch, seconds every other command skips
    from rlhf_ray.runtime.plan import choose_layout, format_plan, make_plan

    if args.runs is not None:
        return _plan_sweep(cfg, args)
    plan = make_plan(cfg, args.gpu_memory_gb, choose=False)
    try:
        plan.chosen = choose_layout(plan, cfg.cluster.layout, cfg.cluster.num_generators)
    finally:  # the table and plan.json also when nothing fits (then the one-line refusal follows)
        Path(args.out).write_text(json.dumps(plan.to_json(), indent=2))
        print(format_plan(plan))
    return 0


def _plan_sweep(cfg: Config, args: argparse.Namespace) -> int:
    from rlhf_ray.runtime.plan import format_plan
    from rlhf_ray.runtime.sweep_plan import SWEEP, choose_layout, format_sweep, sweep_plan

    if args.runs < 1:
        raise UserError(f"--runs {args.runs}: a sweep has at least one run")
    plan = sweep_plan([cfg] * args.runs, args.gpu_memory_gb, choose=False)
    try:
        plan.chosen = choose_layout(plan, SWEEP, 1)
    finally:
        Path(args.out).write_text(json.dumps(plan.to_json(), indent=2))
        print(format_plan(plan) + format_sweep(plan, cfg, args.runs, args.gpu_memory_gb))
    return 0


def _command(argv: list[str]) -> str:
    return next((t for t in argv if not t.startswith("-")), "")


def reject_dashed_keys(argv: list[str]) -> None:
    """`--ppo.iterations=3` (the habit of argparse-based tools) -> a one-line hint naming `ppo.iterations=3`."""
    command = _command(argv)
    if command in TOOLS:  # eval/generate/report have options of their own (--adapter, --prompt, ...)
        return
    for i, token in enumerate(argv):
        name, eq, value = token.partition("=")
        if not name.startswith("--") or name in OPTIONS:
            continue
        key = name[2:].replace("-", "_")
        keys = [key] if key in all_keys(Config) else suggest(Config, key)
        if not keys:
            continue  # not a config key: argparse reports it
        relevant = STAGE_SECTIONS.get(command, [])
        keys.sort(key=lambda k: (k.split(".")[0] != command, k.split(".")[0] not in relevant))  # stable
        if not eq and i + 1 < len(argv) and not argv[i + 1].startswith("-") and "=" not in argv[i + 1]:
            value = argv[i + 1]
        others = f" (or {one_of(keys[1:])})" if len(keys) > 1 else ""
        raise UserError(
            f"unrecognized option {token}: config keys are set without dashes: "
            f"write {keys[0]}={value or 'VALUE'}{others}"
        )


def _run_dir(args: argparse.Namespace) -> Path:
    if getattr(args, "resume", None):
        if args.run_dir and Path(args.run_dir).resolve() != Path(args.resume).resolve():
            raise UserError("--resume RUN_DIR already names the run directory: drop --run-dir")
        return Path(args.resume)
    return Path(args.run_dir or f"runs/{args.command}-{time.strftime('%Y%m%d-%H%M%S')}")


def _load(args: argparse.Namespace) -> Config:
    resume = getattr(args, "resume", None)
    if resume and not args.config and (Path(resume) / "config.yaml").exists():
        # A resumed run keeps its own resolved config; overrides still apply on top.
        return load_config(Path(resume) / "config.yaml", args.overrides)
    return load_config(args.config, args.overrides)


def _config_text(args: argparse.Namespace, cfg: Config) -> str:
    if args.explain is None:
        return json.dumps(cfg.to_dict(), indent=2)
    known = set(sections(Config)) | set(all_keys(Config))
    for want in args.explain:
        if want not in known:
            close = suggest(Config, want)
            hint = f"; did you mean {one_of(close)}?" if close else ""
            raise UserError(f"--explain {want}: no such section or key{hint} (sections: {', '.join(sections(Config))})")
    return explain(Config, args.explain or list(sections(Config)), current=cfg)


def finished_run(run_dir: Path, cfg: Config) -> dict | None:
    """The stored summary of a PPO run whose checkpoints already reach ppo.iterations, else None."""

    checkpoint = latest_checkpoint(run_dir)
    reached = read_json(checkpoint / "driver_state.json")["iteration"] if checkpoint else 0
    if checkpoint is None or reached < cfg.ppo.iterations:
        return None
    done = run_dir / DONE
    return {"iterations": reached, **(read_json(done) if done.exists() else {})}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    set_up_process()  # before ray or bitsandbytes can log (or bitsandbytes is imported)
    try:
        reject_dashed_keys(argv)
    except UserError as exc:
        return _fail(exc)
    args = build_parser(_command(argv)).parse_args(argv)
    if getattr(args, "explain", None):  # `--explain ppo ppo.lr=1e-3`: nargs="*" took the override too
        args.overrides += [w for w in args.explain if "=" in w]
        args.explain = [w for w in args.explain if "=" not in w]
    if args.command in TOOLS:  # they read a run directory: no new run dir, its config.yaml is kept
        logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        try:
            result = importlib.import_module(f"rlhf_ray.tools.{TOOLS[args.command][0]}").main(args)
        except UserError as exc:
            return _fail(exc)
        print(json.dumps(result, default=str))
        return 0
    if args.command == "sweep":
        logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        return _sweep(args, argv)
    run_dir: Path | None = None
    with contextlib.ExitStack() as console:
        try:
            held = None
            if args.command not in ("config", "plan"):
                run_dir = _run_dir(args)
                # One writer per run directory: one that holds a run is locked before anything in it
                # (its config, checkpoints, metrics) is read; a second writer gets one line naming the holder.
                if (held := rundir.lock_first(run_dir, resume=bool(getattr(args, "resume", None)))) is not None:
                    console.callback(held.release)
            cfg = _load(args)
            logging.basicConfig(
                level=cfg.run.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
            )
            if args.command == "config":
                print(_config_text(args, cfg))
                return 0
            if args.command == "plan":
                return _plan(cfg, args)
            resume = bool(getattr(args, "resume", None))
            if args.command == "ppo" and resume and (done := finished_run(run_dir, cfg)) is not None:
                print(
                    f"rlhf-ray: {run_dir} is complete ({done['iterations']} of {cfg.ppo.iterations} iterations); "
                    f"to extend it: rlhf-ray ppo --resume {run_dir} ppo.iterations=N (N > {done['iterations']})",
                    file=sys.stderr,
                )
                print(json.dumps({"run_dir": str(run_dir), **done}, default=str))
                return 0
            # The pipeline's run dir is re-run to continue, so only its file/dir rule applies.
            strict = args.command != "pipeline"
            rundir.prepare(run_dir, cfg, resume=resume, overwrite=args.overwrite, strict=strict)
            stage = importlib.import_module(STAGE_MODULES.get(args.command, f"rlhf_ray.stages.{args.command}"))
            if hasattr(stage, "check"):
                stage.check(cfg)  # cheap up-front checks (models, data), before the run dir or Ray exist
            warn_job_relative(run_dir)
            # One writer per run directory, for the whole run (--overwrite clears it only once locked).
            lock = rundir.claim(run_dir, resume=resume, overwrite=args.overwrite, strict=strict, held=held)
            if held is None:
                console.callback(lock.release)
            console.enter_context(stopping.handling_stops())  # SIGINT/SIGTERM: checkpoint, clean up, one line
            console.enter_context(ConsoleLog(run_dir / CONSOLE_LOG))  # from here on, output is also saved
            # Under `ray job submit` this runs on the head node, in Ray's copy of the repo: say where.
            log.info("run directory: %s (on %s)", run_dir.resolve(), socket.gethostname())
            write_run_info(run_dir, collect(argv))
            save_config(cfg, run_dir / "config.yaml")
            result = stage.run(cfg, run_dir, resume=resume)
        except UserError as exc:
            return _fail(exc)
        except KeyboardInterrupt as exc:  # StopRequested (our handlers) or a plain Ctrl-C
            return _stopped(exc, args.command, run_dir)
        print(json.dumps({"run_dir": str(run_dir), **result}, default=str))
    return 0


def _sweep(args: argparse.Namespace, argv: list[str]) -> int:
    """`rlhf-ray sweep`: 0 when every run is done, 1 when one failed (the others went on), 2 refused."""
    from rlhf_ray.stages import sweep  # torch and Ray: only when a sweep runs

    locks: list = []
    try:
        if args.resume:
            if args.run_dir and Path(args.run_dir).resolve() != Path(args.resume).resolve():
                raise UserError("--resume DIR already names the sweep's directory: drop --run-dir")
            if args.grid or args.runs or args.config:
                raise UserError("--resume continues the sweep's own runs and configs: drop --grid, --runs, --config")
            sweep_dir = Path(args.resume)
            locks, state, runs = sweep.resume(sweep_dir, args.overrides)
        else:
            sweep_dir = Path(args.run_dir or f"runs/sweep-{time.strftime('%Y%m%d-%H%M%S')}")
            locks, state, runs = sweep.start(
                sweep_dir, args.config, args.overrides, args.grid, args.runs, args.overwrite, argv
            )
        with stopping.handling_stops():
            result = sweep.run(sweep_dir, state, runs)
    except UserError as exc:
        return _fail(exc)
    except KeyboardInterrupt as exc:
        signum = getattr(exc, "signum", signal.SIGINT)
        print(
            f"rlhf-ray: stopped by {signal.Signals(signum).name}; every run keeps its last completed iteration: "
            f"continue with rlhf-ray sweep --resume {sweep_dir}",
            file=sys.stderr,
        )
        return 128 + signum
    finally:
        for lock in reversed(locks):
            lock.release()
    print(json.dumps({"run_dir": str(sweep_dir), **result}, default=str))
    if result["failed"]:
        print(
            f"rlhf-ray: {len(result['failed'])} of {len(result['runs'])} runs failed ({'; '.join(result['failed'])}); "
            f"the others went on: fix it and continue with rlhf-ray sweep --resume {sweep_dir}",
            file=sys.stderr,
        )
        return 1
    return 0


def _stopped(exc: KeyboardInterrupt, command: str, run_dir: Path | None) -> int:
    """One line: what was kept and the command that continues (exit status 128 + signal number)."""

    signum = getattr(exc, "signum", signal.SIGINT)
    name = signal.Signals(signum).name
    if run_dir is None:
        print(f"rlhf-ray: stopped by {name} before the run started", file=sys.stderr)
        return 128 + signum
    iteration = getattr(exc, "iteration", 0)
    ppo_dir = run_dir / "ppo" if command == "pipeline" else run_dir
    if not iteration and command in ("ppo", "pipeline") and (ckpt := latest_checkpoint(ppo_dir)) is not None:
        iteration = read_json(ckpt / "driver_state.json")["iteration"]
    if command == "ppo" and iteration:
        then = f"iteration {iteration} is checkpointed: continue with rlhf-ray ppo --resume {run_dir}"
    elif command == "pipeline":
        kept = f"PPO iteration {iteration} is checkpointed, " if iteration else ""
        then = f"{kept}finished stages are cached: run the same rlhf-ray pipeline command to continue"
    elif command == "ppo":
        then = f"no iteration completed, nothing to resume: start again with --run-dir {run_dir} --overwrite"
    else:
        then = f"{command} does not resume: run it again with --overwrite"
    print(f"rlhf-ray: stopped by {name}; {then}", file=sys.stderr)
    return 128 + signum


def warn_job_relative(run_dir: Path) -> None:
    """Under `ray job submit` the driver's cwd is Ray's temporary copy of the repo, deleted later."""
    in_job = os.environ.get("RAY_JOB_ID") or os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    if in_job and not run_dir.is_absolute():
        log.warning(
            "--run-dir %s is relative: in a Ray job it lands in %s, Ray's working copy of the repo, which "
            "Ray deletes later; pass an absolute path, e.g. --run-dir %s",
            run_dir,
            run_dir.resolve(),
            Path.home() / "runs" / run_dir.name,
        )


def _fail(exc: UserError) -> int:
    print(f"rlhf-ray: error: {user_message(exc)}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
