"""Stop signals end a run cleanly: SIGTERM (what `ray job stop` sends) to a driver attached to the
cluster checkpoints the last completed iteration (not only every ppo.checkpoint_every), releases the
actors and the placement group, says in one line how to resume, and the resumed run's metrics equal
an uninterrupted run's apart from time/* keys."""

from __future__ import annotations

import re
import signal

import pytest
from driver_process import comparable, logged, run_actors, start_driver, wait_for_iteration, wait_released

from rlhf_ray.cli import main
from rlhf_ray.runtime.metrics import read_metrics
from rlhf_ray.store.checkpoint import latest_checkpoint

pytestmark = [pytest.mark.usefixtures("ray_session"), pytest.mark.slow]

# 30 short iterations: the signal lands mid-run; no periodic checkpoint before the last iteration.
ARGS = ["--config", "configs/smoke.yaml", "ppo.iterations=30", "ppo.checkpoint_every=1000", "ppo.samples_every=1000"]


def test_sigterm_keeps_the_last_completed_iteration_and_resume_matches(tmp_path):
    run, reference = tmp_path / "sigterm-run", tmp_path / "sigterm-ref"
    ref_driver = start_driver(reference, ARGS, tmp_path / "reference.log")  # alongside: the test takes half the time
    driver = start_driver(run, ARGS, tmp_path / "driver.log")
    try:
        wait_for_iteration(run, 3, driver)
        assert run_actors(run.name)  # attached to the session's Ray: its actors are visible here
        driver.send_signal(signal.SIGTERM)
        code = driver.wait(timeout=120)
        assert ref_driver.wait(timeout=300) == 0
    finally:
        for proc in (driver, ref_driver):
            if proc.poll() is None:
                proc.kill()
    output = (tmp_path / "driver.log").read_text()
    stops = [ln for ln in output.splitlines() if ln.startswith("rlhf-ray: stopped by")]
    assert code == 128 + signal.SIGTERM and len(stops) == 1 and "Traceback" not in output, output[-3000:]
    done = int(re.search(r"iteration (\d+) is checkpointed", stops[0]).group(1))
    assert f"rlhf-ray ppo --resume {run}" in stops[0]
    assert 3 <= done < 30 and logged(run / "metrics.jsonl") == set(range(1, done + 1))
    assert latest_checkpoint(run).name == f"iter-{done:06d}"  # written on stop: checkpoint_every is 1000
    assert wait_released(run.name)  # actors and placement group released by the driver itself

    assert main(["ppo", "--resume", str(run)]) == 0
    rows = comparable(read_metrics(run / "metrics.jsonl"))
    assert [r["iteration"] for r in rows] == list(range(1, 31))
    assert rows == comparable(read_metrics(reference / "metrics.jsonl"))
