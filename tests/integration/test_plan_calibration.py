"""The planner against a real CPU run: its host-memory estimate for the embedded default
(SmolLM2-135M 8-bit, configs/default.yaml, separate layout) vs the summed peak RSS of the actors."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from rlhf_ray.cli import main
from rlhf_ray.config.load import load_config
from rlhf_ray.runtime.plan import make_plan

pytestmark = [pytest.mark.usefixtures("ray_session"), pytest.mark.slow, pytest.mark.soak]


def peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


class ActorPeaks(threading.Thread):
    """Polls the actors' VmHWM (peak RSS, monotone) until they exit; keeps the last value per pid."""

    def __init__(self, run_dir: Path):
        super().__init__(daemon=True)
        self.run_dir, self.peaks, self.done = run_dir, {}, threading.Event()

    def run(self):
        while not self.done.is_set():
            placement = self.run_dir / "placement.json"
            if placement.exists():
                for p in json.loads(placement.read_text()):
                    try:
                        self.peaks[p["actor"]] = max(self.peaks.get(p["actor"], 0), peak_rss(p["pid"]))
                    except (FileNotFoundError, ProcessLookupError):
                        pass
            time.sleep(0.2)


def test_plan_estimate_within_25_percent_of_measured_peak_rss(tmp_path):
    # The default policy (SmolLM2 8-bit) and batch; a tiny scorer so the test never trains a classifier.
    overrides = ["ppo.iterations=1", "cluster.layout=separate", "reward.model=tiny-random-bert"]
    cfg = load_config("configs/default.yaml", overrides)
    estimate = make_plan(cfg).layouts["separate"].total
    run = tmp_path / "default"
    watcher = ActorPeaks(run)
    watcher.start()
    try:
        assert main(["ppo", "--config", "configs/default.yaml", "--run-dir", str(run), *overrides]) == 0
    finally:
        watcher.done.set()
        watcher.join()
    measured = sum(watcher.peaks.values())
    assert set(watcher.peaks) == {"generator-0", "reward-0", "learner-0"}
    print(f"plan {estimate / 2**30:.3f} GiB, measured {measured / 2**30:.3f} GiB, per actor {watcher.peaks}")
    assert abs(estimate - measured) <= 0.25 * measured
