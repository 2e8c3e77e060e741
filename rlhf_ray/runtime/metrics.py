"""Run outputs: metrics.jsonl (always) plus optional TensorBoard / W&B / MLflow sinks, progress
lines, Parquet sample tables, and the run's metrics plot (also the plot of `rlhf-ray report`)."""

from __future__ import annotations

import io
import json
import math
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from rlhf_ray.store.checkpoint import atomic_write


class MetricsLog:
    """Appends one JSON line per iteration (and forwards it to the sinks); on resume, drops lines
    past the checkpoint."""

    def __init__(self, path: Path, keep_through: int | None = None, sinks: list | None = None):
        self.path, self.sinks = path, sinks or []
        if keep_through is not None and path.exists():
            kept = [ln for ln in path.read_text().splitlines() if _iteration(ln) <= keep_through]
            path.write_text("".join(ln + "\n" for ln in kept))
        elif keep_through is None and path.exists():
            path.unlink()

    def write(self, record: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        scalars = {k: float(v) for k, v in record.items() if isinstance(v, (int, float)) and k != "iteration"}
        for sink in self.sinks:
            sink.log(scalars, int(record["iteration"]))

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()


class TensorBoardSink:
    def __init__(self, run_dir: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(run_dir / "tensorboard"))

    def log(self, scalars: dict[str, float], step: int) -> None:
        for key, value in scalars.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()  # a crashed run keeps every finished iteration

    def close(self) -> None:
        self.writer.close()


class WandbSink:
    def __init__(self, project: str, run_dir: Path, config: dict):
        import wandb

        self.wandb = wandb
        self.run = wandb.init(project=project, name=run_dir.name, dir=str(run_dir), config=config)

    def log(self, scalars: dict[str, float], step: int) -> None:
        self.run.log(scalars, step=step)

    def close(self) -> None:
        self.run.finish()


class MLflowSink:
    def __init__(self, experiment: str, run_dir: Path, config: dict):
        import mlflow

        self.mlflow = mlflow
        mlflow.set_experiment(experiment)
        mlflow.start_run(run_name=run_dir.name)
        mlflow.log_params({f"{section}.{k}": v for section, keys in config.items() for k, v in keys.items()})

    def log(self, scalars: dict[str, float], step: int) -> None:
        self.mlflow.log_metrics(scalars, step=step)

    def close(self) -> None:
        self.mlflow.end_run()


def open_sinks(cfg, run_dir: Path) -> list:
    """The optional sinks the config asks for; none is ever required (config validation already
    refused, before any actor started, a sink whose package is missing)."""
    lg, sinks = cfg.logging, []
    if lg.tensorboard:
        sinks.append(TensorBoardSink(run_dir))
    if lg.wandb_project:
        sinks.append(WandbSink(lg.wandb_project, run_dir, cfg.to_dict()))
    if lg.mlflow_experiment:
        sinks.append(MLflowSink(lg.mlflow_experiment, run_dir, cfg.to_dict()))
    return sinks


class LineProgress:
    """One plain line per step: `ray job logs -f` and CI logs show tqdm's \\r redraws as one ever-growing line."""

    def __init__(self, iterable, desc: str, total: int, initial: int):
        self.iterable, self.desc, self.total, self.n = iterable, desc, total, initial
        self.start = time.perf_counter()

    def __iter__(self):
        for item in self.iterable:
            self.n += 1
            yield item

    def set_postfix(self, **values) -> None:
        fields = " ".join(f"{k}={v}" for k, v in values.items())
        elapsed = time.perf_counter() - self.start
        print(f"{self.desc} {self.n}/{self.total} [{elapsed:.0f}s] {fields}", file=sys.stderr, flush=True)


def progress(iterable, *, desc: str, total: int, initial: int = 0):
    """A tqdm bar on a terminal, plain lines elsewhere."""
    if sys.stderr.isatty():
        from tqdm import tqdm

        return tqdm(iterable, desc=desc, unit="it", initial=initial, total=total)
    return LineProgress(iterable, desc, total, initial)


def _iteration(line: str) -> float:
    """A line's iteration; a line a killed driver left half-written counts as past every checkpoint."""
    try:
        return json.loads(line)["iteration"]
    except (ValueError, KeyError, TypeError):
        return float("inf")


def read_metrics(path: Path) -> list[dict]:
    """Every complete line: a run that is still writing (or a killed one) may leave its last line
    half-written, and `report` reads live runs."""
    text = path.read_text()
    lines = text.splitlines()
    if lines and not text.endswith("\n"):
        try:
            json.loads(lines[-1])
        except ValueError:
            lines.pop()  # being appended right now
    return [json.loads(ln) for ln in lines if ln.strip()]


def write_samples(
    run_dir: Path,
    iteration: int,
    prompts: list[str],
    responses: list[str],
    scores: list[float | None],
    sources: dict[str, list[float | None]] | None = None,
) -> Path:
    """scores: the combined reward (None: no source applied); sources: each source's value as a
    `score/<name>` column (None where it returned none)."""
    path = run_dir / "samples" / f"iter-{iteration:06d}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = {"iteration": [iteration] * len(prompts), "prompt": prompts, "response": responses, "score": scores}
    columns.update({f"score/{name}": values for name, values in (sources or {}).items()})
    buffer = pa.BufferOutputStream()
    pq.write_table(pa.table(columns), buffer)
    atomic_write(path, buffer.getvalue().to_pybytes())  # whole or absent: `report` may read a live run
    return path


def reward_metrics(scores: list) -> dict[str, float]:
    """From an iteration's Scores shards: reward/mean and reward/std over the samples some source
    applied to, reward/<name>/mean per source (over the samples it applied to; absent if none) and
    reward/none_frac, the share of samples no source applied to (kept out of the loss)."""
    import torch

    rewards = torch.cat([s.rewards for s in scores]).float()
    applied = torch.cat([s.applied for s in scores])
    kept = rewards[applied]
    out = {
        "reward/mean": float(kept.mean()) if len(kept) else float("nan"),
        "reward/std": float(kept.std()) if len(kept) > 1 else 0.0,
        "reward/none_frac": float((~applied).float().mean()),
    }
    for name in scores[0].per_source:
        values = torch.cat([s.per_source[name] for s in scores])
        got = values[~torch.isnan(values)]
        if len(got):
            out[f"reward/{name}/mean"] = float(got.mean())
    return out


def source_keys(rows: list[dict]) -> list[str]:
    """The reward/<name>/mean keys of a run with more than one reward source (one source's mean is reward/mean)."""
    keys = list(dict.fromkeys(k for r in rows for k in r if k.startswith("reward/") and k.endswith("/mean")))
    keys = [k for k in keys if k != "reward/mean"]
    return keys if len(keys) > 1 else []


def sample_scores(scores: list) -> tuple[list[float | None], dict[str, list[float | None]]]:
    """The samples table's `score` column (None: no source applied) and its per-source columns."""
    combined = [float(r) if a else None for s in scores for r, a in zip(s.rewards.tolist(), s.applied.tolist())]
    per_source = {
        name: [None if math.isnan(v) else v for s in scores for v in s.per_source[name].tolist()]
        for name in scores[0].per_source
    }
    return combined, per_source


PHASES = ("generate", "score", "learn", "sync")


def _series(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    pts = [(r["iteration"], r[key]) for r in rows if key in r]
    return ([p[0] for p in pts], [p[1] for p in pts]) if pts else ([], [])


def _panel(ax, rows, title, left: tuple[str, ...], right: tuple[str, ...] = ()) -> None:
    """Curves of `left` keys, and of `right` keys on a second y axis."""
    from matplotlib.ticker import MaxNLocator

    ax.set_title(title, fontsize=10)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    lines = []
    for key in left:
        xs, ys = _series(rows, key)
        lines += ax.plot(xs, ys, marker="o", markersize=3, label=key)
    if right:
        twin = ax.twinx()
        for i, key in enumerate(right):
            xs, ys = _series(rows, key)
            lines += twin.plot(xs, ys, marker="s", markersize=3, color=f"C{len(left) + i}", linestyle="--", label=key)
    if lines:
        ax.legend(lines, [ln.get_label() for ln in lines], fontsize=7, loc="best")
    else:
        ax.text(0.5, 0.5, "not logged in this run", ha="center", va="center", transform=ax.transAxes)


def plot_metrics(path: Path, out: Path, title: str | None = None) -> Path | None:
    """The run's curves as one PNG (titled with the run and the date of its last metrics line);
    skipped (None) when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = read_metrics(path)
    fig, axes = plt.subplots(2, 3, figsize=(13, 6.5))
    ax = axes[0, 0]
    xs, mean = _series(rows, "reward/mean")
    _, std = _series(rows, "reward/std")
    _panel(ax, rows, "reward (mean ± std over samples), per source", ("reward/mean", *source_keys(rows)))
    if xs and len(std) == len(mean):
        ax.fill_between(xs, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)], alpha=0.2)
    _panel(axes[0, 1], rows, "KL to reference (nats/seq) and KL coef", ("kl/mean",), ("kl/coef",))
    _panel(axes[0, 2], rows, "entropy (nats/token)", ("entropy/mean",))
    _panel(axes[1, 0], rows, "clip fraction and approx KL", ("policy/clipfrac",), ("policy/approx_kl",))
    _panel(axes[1, 1], rows, "value loss", ("value/loss",))
    _phase_times(axes[1, 2], rows)
    for a in axes[1]:
        a.set_xlabel("iteration")
    stamp = time.strftime("%Y-%m-%d", time.localtime(path.stat().st_mtime))
    fig.suptitle(f"{title or path.parent.name}: {len(rows)} PPO iterations ({stamp})", fontsize=11)
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=72)
    plt.close(fig)
    atomic_write(out, png.getvalue())  # the run and `report` both draw it: a reader never sees half of one
    return out


def _phase_times(ax, rows: list[dict]) -> None:
    from matplotlib.ticker import MaxNLocator

    its = [r["iteration"] for r in rows]
    bottom = [0.0] * len(rows)
    for i, phase in enumerate(PHASES):
        secs = [r.get(f"time/{phase}_s", 0.0) for r in rows]
        ax.bar(its, secs, bottom=bottom, label=phase, color=f"C{i}")
        bottom = [b + s for b, s in zip(bottom, secs)]
    ax.set_title("phase times per iteration (s)", fontsize=10)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize=7)
