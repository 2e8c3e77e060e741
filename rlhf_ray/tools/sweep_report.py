"""`rlhf-ray report DIR` on a sweep's directory: every run's reward and KL curves in one plot
(DIR/sweep.png) and DIR/report.md, a table of each run's final figures (and its held-out eval where
`rlhf-ray eval DIR/<name>` ran), sorted by final reward."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

from rlhf_ray.errors import UserError
from rlhf_ray.runtime.metrics import read_metrics
from rlhf_ray.store.checkpoint import atomic_write
from rlhf_ray.store.sweeps import read_sweep

LAST = 3  # the final figures: the mean over a run's last iterations (one iteration's draw is noisy)


def _mean(rows: list[dict], key: str) -> float:
    vals = [r[key] for r in rows if isinstance(r.get(key), (int, float))]
    return sum(vals) / len(vals) if vals else float("nan")


def run_figures(sweep_dir: Path) -> list[dict]:
    """One row per run: state, iterations, final reward / KL (mean of the last iterations), eval."""
    out = []
    for run in read_sweep(sweep_dir)["runs"]:
        path = sweep_dir / run["name"] / "metrics.jsonl"
        rows = read_metrics(path) if path.is_file() else []
        last = rows[-LAST:]
        row = {
            "run": run["name"],
            "state": run["state"],
            "iterations": rows[-1]["iteration"] if rows else 0,
            "reward": _mean(last, "reward/mean"),
            "kl": _mean(last, "kl/mean"),
            "error": run.get("error"),
            "rows": rows,
        }
        ev = sweep_dir / run["name"] / "eval.json"
        if ev.is_file():
            result = json.loads(ev.read_text())
            row["eval_reference"] = result["reference"].get("reward/mean")
            row["eval_policy"] = result["policy"].get("reward/mean")
        out.append(row)
    # best final reward first; runs without a figure last
    return sorted(out, key=lambda r: (math.isnan(r["reward"]), -r["reward"] if not math.isnan(r["reward"]) else 0))


def plot_sweep(figures: list[dict], out: Path, title: str) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for row in figures:
        for ax, key in zip(axes, ("reward/mean", "kl/mean")):
            pts = [(r["iteration"], r[key]) for r in row["rows"] if key in r]
            if pts:
                ax.plot(*zip(*pts), marker=".", label=f"{row['run']} ({row['state']})")
    for ax, name in zip(axes, ("reward (mean over samples)", "KL to reference (nats/seq)")):
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{title}: {len(figures)} runs on one base", fontsize=11)
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=72)
    plt.close(fig)
    atomic_write(out, png.getvalue())
    return out


def _f(value) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:+.3f}"


def render(sweep_dir: Path, figures: list[dict], with_plot: bool) -> str:
    lines = [f"# Sweep {sweep_dir.name}", ""]
    if with_plot:
        lines += ["![every run's reward and KL](sweep.png)", ""]
    evaluated = any("eval_policy" in r for r in figures)
    head = f"| run | state | iterations | reward (last {LAST}) | KL (last {LAST}) |"
    rule = "|---|---|---|---|---|"
    if evaluated:
        head += " eval reward: reference | eval reward: policy |"
        rule += "---|---|"
    lines += ["Sorted by final reward (the mean of each run's last iterations).", "", head, rule]
    for r in figures:
        line = f"| {r['run']} | {r['state']} | {r['iterations']} | {_f(r['reward'])} | {_f(r['kl'])} |"
        if evaluated:
            line += f" {_f(r.get('eval_reference'))} | {_f(r.get('eval_policy'))} |"
        lines.append(line)
    failed = [r for r in figures if r["error"]]
    if failed:
        lines += ["", "Failed runs:", ""] + [f"- {r['run']}: {r['error']}" for r in failed]
    return "\n".join(lines) + "\n"


def sweep_report(sweep_dir: Path) -> dict:
    figures = run_figures(sweep_dir)
    if not any(r["rows"] for r in figures):
        raise UserError(f"{sweep_dir}: no run of the sweep finished an iteration yet")
    plot = plot_sweep(figures, sweep_dir / "sweep.png", sweep_dir.name)
    atomic_write(sweep_dir / "report.md", render(sweep_dir, figures, plot is not None).encode())
    table = [{k: v for k, v in r.items() if k != "rows"} for r in figures]
    return {"report": str(sweep_dir / "report.md"), "plot": str(plot) if plot else None, "runs": table}
