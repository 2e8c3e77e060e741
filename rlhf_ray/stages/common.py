"""Run-directory discipline shared by the sft, merge and reward stages: a DONE.json marker written
last and progress streamed from a Ray task (files it ships back are published by checkpoint.write_dir)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

from rlhf_ray.config.schema import ClusterConfig
from rlhf_ray.process import freeze_startup, set_torch_threads, set_up_process
from rlhf_ray.runtime import stopping
from rlhf_ray.runtime.placement import attached
from rlhf_ray.store.checkpoint import atomic_write, read_json

log = logging.getLogger(__name__)

DONE = "DONE.json"


def is_done(run_dir: Path) -> bool:
    return (run_dir / DONE).exists()


def begin(run_dir: Path, resume: bool) -> dict | None:
    """The stored summary when resuming a finished stage; otherwise clear a stale marker."""
    marker = run_dir / DONE
    if resume and marker.exists():
        log.info("%s is already finished (%s): skipping", run_dir, DONE)
        return read_json(marker)
    marker.unlink(missing_ok=True)
    return None


def finish(run_dir: Path, summary: dict) -> dict:
    """metrics.json, then DONE.json LAST (each written atomically): its presence means every
    output is complete."""
    data = json.dumps(summary, indent=2, default=str).encode()
    atomic_write(run_dir / "metrics.json", data)
    atomic_write(run_dir / DONE, data)
    return summary


def stream_task(
    cluster: ClusterConfig,
    fn: Callable[..., Iterator],
    options: dict,
    args: tuple,
    *,
    total: int,
    desc: str,
    jsonl: Path,
) -> dict:
    """Run generator `fn` as a Ray task yielding ("step", record) ... ("done", result), and ("info", line)
    for a line to log on the driver.

    Step records go to `jsonl` and a driver-side progress bar as they arrive; returns the result.
    A Ray started here is shut down again, as the ppo stage does."""
    import ray

    with attached(cluster):  # a UserError raised on the worker reaches the CLI wrapped by Ray (see cli)
        stopping.reclaim()  # ray.init replaced our SIGTERM handler
        return _consume(ray.remote(fn).options(**options).remote(*args), total, desc, jsonl)


def _consume(stream, total: int, desc: str, jsonl: Path) -> dict:
    import ray
    from tqdm import tqdm

    with jsonl.open("w") as sink, tqdm(total=total, desc=desc, unit="step") as bar:
        for ref in stream:
            kind, payload = ray.get(ref)
            if kind == "done":
                return payload
            if kind == "info":  # what the task does before its first step, said on the driver
                bar.clear()
                log.info("%s", payload)
                bar.refresh()
                continue
            sink.write(json.dumps(payload) + "\n")
            sink.flush()
            bar.update(1)
            bar.set_postfix(loss=f"{payload['loss']:.3f}")
    raise RuntimeError(f"{desc} task ended without a result")


def prepare_worker(seed: int, torch_threads: int) -> None:
    """Inside a Ray task: thread count as PPO's actors, seeded generators, and no per-file
    "Loading weights" bars (Ray would forward them line by line to the driver's log)."""
    from transformers import set_seed
    from transformers.utils import logging as hf_logging

    set_up_process()
    freeze_startup()  # a Ray worker: torch and transformers are imported, the model load is next
    set_torch_threads(torch_threads)
    set_seed(seed)  # python, numpy and torch generators
    hf_logging.disable_progress_bar()
