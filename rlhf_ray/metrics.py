"""Run outputs: metrics.jsonl (one line per iteration), Parquet sample tables, a metrics plot."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


class MetricsLog:
    """Appends one JSON line per iteration; on resume, drops lines past the checkpoint."""

    def __init__(self, path: Path, keep_through: int | None = None):
        self.path = path
        if keep_through is not None and path.exists():
            kept = [ln for ln in path.read_text().splitlines() if _iteration(ln) <= keep_through]
            path.write_text("".join(ln + "\n" for ln in kept))
        elif keep_through is None and path.exists():
            path.unlink()

    def write(self, record: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")


def _iteration(line: str) -> float:
    """A line's iteration; a line a killed driver left half-written counts as past every checkpoint."""
    try:
        return json.loads(line)["iteration"]
    except (ValueError, KeyError, TypeError):
        return float("inf")


def read_metrics(path: Path) -> list[dict]:
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]


def write_samples(run_dir: Path, iteration: int, prompts: list[str], responses: list[str], scores: list[float]) -> Path:
    path = run_dir / "samples" / f"iter-{iteration:06d}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table({"iteration": [iteration] * len(prompts), "prompt": prompts, "response": responses, "score": scores})
    pq.write_table(table, path)
    return path


def plot_metrics(path: Path, out: Path, keys=("reward/mean", "kl/mean", "policy/loss", "entropy/mean")) -> Path | None:
    """A 2x2 PNG of the main curves; skipped (None) when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = read_metrics(path)
    fig, axes = plt.subplots(2, 2, figsize=(9, 6))
    for ax, key in zip(axes.flat, keys):
        pts = [(r["iteration"], r[key]) for r in rows if key in r]
        if pts:
            ax.plot(*zip(*pts), marker="o", markersize=3)
        ax.set_title(key)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
