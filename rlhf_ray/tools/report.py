"""`rlhf-ray report RUN_DIR`: the run's curves (metrics.png) and report.md with the config summary,
final figures, the eval table (when `rlhf-ray eval` has run) and samples side by side."""

from __future__ import annotations

import json
import time
from pathlib import Path

from rlhf_ray.config.sources import RewardSourceConfig
from rlhf_ray.errors import UserError
from rlhf_ray.runtime.metrics import PHASES, plot_metrics, read_metrics, source_keys
from rlhf_ray.store.checkpoint import atomic_write
from rlhf_ray.store.sweeps import is_sweep
from rlhf_ray.tools.evaluate import format_table
from rlhf_ray.tools.sweep_report import sweep_report

CONFIG_KEYS = [
    "model.policy",
    "model.quant",
    "model.lora_r",
    "algo.advantage",
    "algo.kl_controller",
    "algo.kl_coef",
    "algo.kl_target",
    "ppo.iterations",
    "ppo.batch_size",
    "ppo.epochs",
    "ppo.lr",
    "generate.temperature",
    "generate.max_new_tokens",
]
SIDE_BY_SIDE = 8  # prompts shown in the samples table


def add_arguments(parser) -> None:
    parser.add_argument(
        "run", metavar="RUN_DIR", help="PPO run directory (holds metrics.jsonl), or a sweep's (holds sweep.json)"
    )


def main(args) -> dict:
    run_dir = Path(args.run)
    if is_sweep(run_dir):  # every run's curves in one plot, final figures sorted (tools/sweep_report.py)
        return sweep_report(run_dir)
    if not (run_dir / "metrics.jsonl").is_file():
        raise UserError(f"{run_dir} has no metrics.jsonl: pass the directory of a PPO run")
    rows = read_metrics(run_dir / "metrics.jsonl")
    if not rows:
        raise UserError(f"{run_dir}/metrics.jsonl is empty: the run finished no iteration")
    plot = plot_metrics(run_dir / "metrics.jsonl", run_dir / "metrics.png")
    text = render(run_dir, rows, plot is not None)
    atomic_write(run_dir / "report.md", text.encode())
    return {"report": str(run_dir / "report.md"), "plot": str(plot) if plot else None}


def _cell(text: str, limit: int = 160) -> str:
    text = " ".join(str(text).split()).replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _score(value: float | None) -> str:
    return "no source applied" if value is None else f"{value:+.2f}"


def _config_section(run_dir: Path) -> list[str]:
    import yaml

    path = run_dir / "config.yaml"
    if not path.is_file():
        return ["(no config.yaml in the run directory)"]
    cfg = yaml.safe_load(path.read_text())
    lines = ["| key | value |", "|---|---|"]
    for dotted in CONFIG_KEYS:
        section, key = dotted.split(".")
        lines.append(f"| `{dotted}` | {cfg.get(section, {}).get(key)} |")
    sources = [RewardSourceConfig(**entry) for entry in (cfg.get("reward", {}).get("sources") or [])]
    if sources:  # name and weight of each; the combined reward is their weighted sum
        lines.append(f"| `reward.sources` | {', '.join(f'{s.resolved_name()} x {s.weight:g}' for s in sources)} |")
    judges = [RewardSourceConfig(**entry) for entry in (cfg.get("eval", {}).get("judges") or [])]
    if judges:  # scored by `eval` only, never trained against
        lines.append(f"| `eval.judges` | {', '.join(f'{j.resolved_name()} ({j.kind})' for j in judges)} |")
    return lines


def _final_figures(rows: list[dict]) -> list[str]:
    def mean(key, part):
        vals = [r[key] for r in part if key in r]
        return sum(vals) / len(vals) if vals else float("nan")

    first, last = rows[:3], rows[-3:]
    total_s = sum(r.get("time/iteration_s", 0) for r in rows)
    lines = [
        f"Iterations: {rows[-1]['iteration']}; total time {total_s / 60:.1f} min.",
        "",
        f"| metric | first {len(first)} iterations | last {len(last)} iterations |",
        "|---|---|---|",
    ]
    for key in (
        "reward/mean",
        "reward/std",
        *source_keys(rows),
        *(["reward/none_frac"] if any(r.get("reward/none_frac") for r in rows) else []),
        "kl/mean",
        "kl/coef",
        "entropy/mean",
        "policy/clipfrac",
        "policy/approx_kl",
        "value/loss",
        "response/length_mean",
    ):
        if any(key in r for r in rows):
            lines.append(f"| `{key}` | {mean(key, first):.3f} | {mean(key, last):.3f} |")
    phases = ", ".join(f"{p} {mean(f'time/{p}_s', rows):.2f} s" for p in PHASES)
    return lines + ["", f"Mean phase times per iteration: {phases}."]


def _eval_section(run_dir: Path) -> list[str]:

    path = run_dir / "eval.json"
    if not path.is_file():
        return [f"Not evaluated yet: run `rlhf-ray eval {run_dir}`."]
    result = json.loads(path.read_text())
    lines = [f"{result['num_prompts']} held-out prompts (IMDB test-split openings); adapter `{result['adapter']}`."]
    judges = result.get("judges") or []
    if judges:
        named = ", ".join(
            f"`{j['name']}` ({j.get('function') or j.get('model') or j.get('url') or j['kind']})" for j in judges
        )
        lines += [
            "",
            f"Judges: {named}; they score the same responses and were never trained against, so a policy that "
            "learned what its reward model likes rather than the task shows as a gap between the two.",
        ]
    return lines + ["", format_table(result)]


def _samples_section(run_dir: Path) -> list[str]:
    """Same prompts before and after training, from the eval responses: the reference is exactly
    the policy of iteration 1 (a fresh LoRA has B = 0). Without eval: first and last saved samples."""
    import pyarrow.parquet as pq

    path = run_dir / "eval_responses.parquet"
    if path.is_file():
        t = pq.read_table(path).to_pylist()
        ref = [r for r in t if r["model"] == "reference"][:SIDE_BY_SIDE]
        pol = [r for r in t if r["model"] == "policy"][:SIDE_BY_SIDE]
        lines = ["| prompt | iteration 1 (policy v0 = reference) | after the last iteration |", "|---|---|---|"]
        for a, b in zip(ref, pol):
            lines.append(
                f"| {_cell(a['prompt'])} | {_cell(a['response'])} ({_score(a['score'])}) "
                f"| {_cell(b['response'])} ({_score(b['score'])}) |"
            )
        return ["Held-out prompts; the combined reward in brackets.", ""] + lines
    files = sorted((run_dir / "samples").glob("iter-*.parquet"))
    if not files:
        return ["No samples were saved."]
    lines = []
    for f in (files[0], files[-1]) if len(files) > 1 else files:
        rows = pq.read_table(f).to_pylist()[: SIDE_BY_SIDE // 2]
        lines += [
            f"Iteration {rows[0]['iteration']} (training prompts):",
            "",
            "| prompt | response | score |",
            "|---|---|---|",
        ]
        lines += [f"| {_cell(r['prompt'])} | {_cell(r['response'])} | {_score(r['score'])} |" for r in rows] + [""]
    return lines + [f"For the same prompts before and after training, run `rlhf-ray eval {run_dir}`."]


def render(run_dir: Path, rows: list[dict], with_plot: bool) -> str:
    parts = [
        f"# PPO run report: `{run_dir.name}`",
        "",
        f"Generated {time.strftime('%Y-%m-%d %H:%M')}.",
        "",
        "## Config",
        "",
        *_config_section(run_dir),
        "",
        "## Final figures",
        "",
        *_final_figures(rows),
        "",
    ]
    if with_plot:
        parts += ["![metrics](metrics.png)", ""]
    parts += [
        "## Held-out evaluation",
        "",
        *_eval_section(run_dir),
        "",
        "## Samples",
        "",
        *_samples_section(run_dir),
        "",
    ]
    return "\n".join(parts)
