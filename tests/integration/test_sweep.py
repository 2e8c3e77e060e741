"""`rlhf-ray sweep` on a real local Ray: two runs on one quantized base, one failing alone, --resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import ray
from driver_process import REPO, logged, run_actors, wait_for_iteration

from rlhf_ray.cli import main
from rlhf_ray.runtime.metrics import read_metrics

pytestmark = pytest.mark.usefixtures("ray_session")

SMOKE = "configs/smoke.yaml"

FLAKY = """
from pathlib import Path

CALLS = []


def flaky(prompts, completions, **columns):
    CALLS.append(1)
    if len(CALLS) >= 2 and Path({marker!r}).exists():
        raise ValueError("boom: the reward service is down")
    return [float(len(c) % 3) for c in completions]


def huge_later(prompts, completions, **columns):
    CALLS.append(1)
    if len(CALLS) >= 2 and Path({marker!r}).exists():  # finite, but its value loss overflows float32
        return [3e38] * len(completions)
    return [1.0] * len(completions)
"""


def test_two_runs_one_base_a_failure_stays_alone_and_resume_finishes_it(tmp_path, capsys):
    marker = tmp_path / "down"
    marker.touch()
    (tmp_path / "flaky.py").write_text(FLAKY.format(marker=str(marker)))
    runs = tmp_path / "runs.yaml"
    runs.write_text(
        "ok: [run.seed=0]\n"
        "bad:\n"
        "  - run.seed=1\n"
        "  - algo.advantage=grpo\n"
        "  - model.lora_r=2\n"
        f"  - 'reward.sources=[{{kind: function, function: {tmp_path}/flaky.py:flaky}}]'\n"
        "nan:\n"
        "  - run.seed=2\n"
        f"  - 'reward.sources=[{{kind: function, function: {tmp_path}/flaky.py:huge_later}}]'\n"
    )
    sweep = tmp_path / "sweep"
    # three reward scorers share one role's CPUs: 0.6 + 0.6 of the 2-CPU cluster, not 0.6 + 3 x 0.6
    args = ["--runs", str(runs), "ppo.iterations=2", "cluster.actor_cpus=0.6"]
    code = main(["sweep", "--config", SMOKE, "--run-dir", str(sweep), *args])
    err = capsys.readouterr().err
    assert code == 1, err
    assert "2 of 3 runs failed" in err and "boom" in err and f"sweep --resume {sweep}" in err
    data = json.loads((sweep / "sweep.json").read_text())
    assert data["generation"] == "one call for every run (lean)"  # the lean loop: each row under its run's adapter
    state = {r["name"]: r for r in data["runs"]}
    assert state["ok"]["state"] == "done" and state["ok"]["iteration"] == 2
    assert state["bad"]["state"] == "failed" and state["bad"]["iteration"] == 1 and "boom" in state["bad"]["error"]
    # a non-finite batch under ppo.on_nonfinite=stop (the default) stops its run alone, too
    assert state["nan"]["state"] == "failed" and state["nan"]["iteration"] == 1
    assert "non-finite loss/gradient" in state["nan"]["error"]
    assert (sweep / "nan" / "checkpoints" / "iter-000001").is_dir()
    # the run that went on is a whole run directory; the failed one kept its completed iteration
    ok = read_metrics(sweep / "ok" / "metrics.jsonl")
    assert [m["iteration"] for m in ok] == [1, 2] and ok[-1]["policy/version"] == 2
    assert (sweep / "ok" / "DONE.json").exists() and (sweep / "ok" / "checkpoints" / "iter-000002").is_dir()
    assert (sweep / "ok" / "samples").is_dir() and (sweep / "ok" / "plan.json").exists()
    plan = json.loads((sweep / "plan.json").read_text())  # the sweep's own: one host, a scorer per run
    assert plan["chosen_layout"] == "sweep" and plan["layouts"]["sweep"]["counts"] == {"policy": 1, "scorer": 3}
    assert (sweep / "bad" / "checkpoints" / "iter-000001" / "adapter" / "adapter_config.json").exists()
    assert not (sweep / "bad" / "DONE.json").exists()
    bad_first = read_metrics(sweep / "bad" / "metrics.jsonl")
    assert [m["iteration"] for m in bad_first] == [1] and "value/loss" not in bad_first[0]  # grpo: no critic
    assert "value/loss" in ok[0]  # gae: its own value head
    events = [json.loads(ln) for ln in (sweep / "bad" / "events.jsonl").read_text().splitlines()]
    assert events[-1]["kind"] == "run_failed" and events[-1]["iteration"] == 2
    # one run of the sweep is a normal run: ppo --resume knows it is complete
    assert main(["ppo", "--resume", str(sweep / "ok")]) == 0
    assert "is complete (2 of 2 iterations)" in capsys.readouterr().err

    # the reward service is back: --resume continues the failed run from its checkpoint, the done one is left alone
    marker.unlink()
    ok_ckpt = (sweep / "ok" / "checkpoints" / "iter-000002" / "policy.safetensors").read_bytes()
    assert main(["sweep", "--resume", str(sweep)]) == 0, capsys.readouterr().err
    state = {r["name"]: r for r in json.loads((sweep / "sweep.json").read_text())["runs"]}
    assert state["bad"]["state"] == "done" and state["bad"]["iteration"] == 2 and "error" not in state["bad"]
    bad = read_metrics(sweep / "bad" / "metrics.jsonl")
    assert [m["iteration"] for m in bad] == [1, 2] and bad[0] == bad_first[0] and bad[1]["policy/version"] == 2
    assert (sweep / "bad" / "DONE.json").exists()
    assert (sweep / "ok" / "checkpoints" / "iter-000002" / "policy.safetensors").read_bytes() == ok_ckpt
    assert state["nan"]["state"] == "done"
    # one report for the sweep: every run's curves, the final figures sorted
    capsys.readouterr()
    assert main(["report", str(sweep)]) == 0
    table = json.loads(capsys.readouterr().out)["runs"]
    assert sorted(r["run"] for r in table) == ["bad", "nan", "ok"] and all(r["iterations"] == 2 for r in table)
    assert [r["reward"] for r in table] == sorted((r["reward"] for r in table), reverse=True)


def recoveries(sweep) -> list[dict]:
    events = [json.loads(ln) for p in sweep.glob("*/events.jsonl") for ln in p.read_text().splitlines() if ln]
    return [e for e in events if e.get("kind") == "recovery"]


def test_a_run_of_a_sweep_learns_as_it_does_alone_through_a_dead_host_sigterm_and_resume(tmp_path):
    """Seed 1 beside seed 0 on one base (one sampling call for both), its policy host killed, then the
    driver stopped by SIGTERM and the sweep resumed, against seed 1 alone (`ppo`, fused): the same
    samples, rewards and updates, up to the float rounding of rows that share a matmul."""
    common = ["ppo.iterations=6", "generate.decoder=lean", "ppo.checkpoint_every=100", "ppo.samples_every=2"]
    sweep = tmp_path / "sweep"
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address, "PYTHONPATH": str(REPO)}
    args = ["--config", SMOKE, "--run-dir", str(sweep), "--grid", "run.seed=[0,1]", *common]
    with (tmp_path / "driver.log").open("w") as out:  # attached to the session's Ray, as a `ray job` driver
        driver = subprocess.Popen(
            [sys.executable, "-m", "rlhf_ray.cli", "sweep", *args], cwd=REPO, env=env, stdout=out, stderr=out
        )
    try:
        for run in ("seed=0", "seed=1"):
            wait_for_iteration(sweep / run, 1, driver, timeout_s=180)
        # the one policy host dies: restarted once by the run that meets it, the other run restored on it
        ray.kill(ray.get_actor(run_actors(sweep.name)["policy-0"], namespace="rlhf_ray"))
        at_kill = {run: max(logged(sweep / run / "metrics.jsonl")) for run in ("seed=0", "seed=1")}
        deadline = time.monotonic() + 180
        while not (recovered := recoveries(sweep)) and time.monotonic() < deadline and driver.poll() is None:
            time.sleep(0.05)
        assert recovered and all(e["role"] == "policy-0" for e in recovered), recovered
        for run, done in at_kill.items():  # both go on, on the fresh host, before the stop
            wait_for_iteration(sweep / run, done + 1, driver, timeout_s=120)
        driver.send_signal(signal.SIGTERM)
        code = driver.wait(timeout=120)
    finally:
        if driver.poll() is None:
            driver.kill()
    output = (tmp_path / "driver.log").read_text()
    assert code == 128 + signal.SIGTERM, output[-3000:]
    assert f"continue with rlhf-ray sweep --resume {sweep}" in output and "Traceback" not in output
    runs = {r["name"]: r for r in json.loads((sweep / "sweep.json").read_text())["runs"]}
    for name, run in runs.items():  # every run checkpointed at its last completed iteration on the signal
        assert run["state"] == "stopped" and 1 <= run["iteration"] < 6, run
        assert logged(sweep / name / "metrics.jsonl") == set(range(1, run["iteration"] + 1))
        assert (sweep / name / "checkpoints" / f"iter-{run['iteration']:06d}").is_dir()
    assert main(["sweep", "--resume", str(sweep)]) == 0
    plan = json.loads((sweep / "plan.json").read_text())["layouts"]["sweep"]
    assert plan["counts"] == {"policy": 1, "scorer": 1}  # one base, and one scorer for the two runs' one reward
    import pyarrow.parquet as pq

    for seed in (1,):  # the second run of the one call; seed 0 is sampled and learned the same way
        alone = tmp_path / f"alone{seed}"
        solo_args = ["--config", SMOKE, "--run-dir", str(alone), f"run.seed={seed}", "cluster.layout=fused"]
        assert main(["ppo", *solo_args, *common]) == 0
        swept = read_metrics(sweep / f"seed={seed}" / "metrics.jsonl")
        solo = read_metrics(alone / "metrics.jsonl")
        assert [r["iteration"] for r in swept] == [r["iteration"] for r in solo] == list(range(1, 7))
        for s, a in zip(swept, solo):
            assert s["reward/mean"] == a["reward/mean"] and s["response/length_mean"] == a["response/length_mean"]
            for key in ("kl/mean", "policy/loss", "value/loss", "entropy/mean", "policy/grad_norm"):
                assert abs(s[key] - a[key]) <= 1e-4 * max(1.0, abs(a[key])), (seed, s["iteration"], key)
        files = sorted(p.name for p in (alone / "samples").iterdir())
        assert files and files == sorted(p.name for p in (sweep / f"seed={seed}" / "samples").iterdir())
        for name in files:  # the same prompts, responses and scores
            swept_rows = pq.read_table(sweep / f"seed={seed}" / "samples" / name).to_pylist()
            assert swept_rows == pq.read_table(alone / "samples" / name).to_pylist()


# `make test-all`: the fused sweep's dead host above and tests/unit/test_mixed_sampling.py's separate hosts in CI
@pytest.mark.soak
def test_separate_layout_two_generator_hosts_a_dead_one_sigkill_resume_and_each_run_as_alone(tmp_path):
    """cluster.layout=separate with two generators and two data-parallel learners: two learner hosts
    (one process group for both runs' learners) and two generator hosts, each with both runs'
    adapters (each run's prompts sharded over them as alone). One generator host is killed:
    restarted by the run that meets it, both runs synced on it again. Then the driver is SIGKILLed and
    the sweep resumed from the runs' checkpoints. The second run (its adapter added beside the first's on
    every host) equals its uninterrupted solo run of the same layout (samples, rewards; the rest within the
    rounding of rows that share a matmul); one solo run, not two, keeps the suite's minutes."""
    layout = ["cluster.layout=separate", "cluster.num_generators=2", "cluster.num_learners=2", "generate.decoder=lean"]
    common = [*layout, "ppo.iterations=5", "ppo.checkpoint_every=2", "ppo.samples_every=2"]
    sweep = tmp_path / "sweep"
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address, "PYTHONPATH": str(REPO)}
    args = ["--config", SMOKE, "--run-dir", str(sweep), "--grid", "run.seed=[0,1]", *common]
    with (tmp_path / "driver.log").open("w") as out:
        driver = subprocess.Popen(
            [sys.executable, "-m", "rlhf_ray.cli", "sweep", *args], cwd=REPO, env=env, stdout=out, stderr=out
        )
    try:
        for run in ("seed=0", "seed=1"):
            wait_for_iteration(sweep / run, 1, driver, timeout_s=180)
        actors = run_actors(sweep.name)
        assert sorted(actors) == ["generator-0", "generator-1", "learner-0", "learner-1", "reward-0"], actors
        ray.kill(ray.get_actor(actors["generator-1"], namespace="rlhf_ray"))
        for run in ("seed=0", "seed=1"):
            wait_for_iteration(sweep / run, 3, driver, timeout_s=180)
        assert driver.poll() is None
        driver.send_signal(signal.SIGKILL)  # no checkpoint on the way out: the runs resume from iteration 2
        driver.wait(timeout=60)
    finally:
        if driver.poll() is None:
            driver.kill()
    recovered = recoveries(sweep)
    assert recovered and all(e["role"] == "generator-1" for e in recovered), recovered
    assert main(["sweep", "--resume", str(sweep)]) == 0
    data = json.loads((sweep / "sweep.json").read_text())
    assert data["generation"] == "one call for every run (lean)" and all(r["state"] == "done" for r in data["runs"])
    plan = json.loads((sweep / "plan.json").read_text())["layouts"]["sweep"]
    assert plan["counts"] == {"generator": 2, "learner": 2, "scorer": 1}
    import pyarrow.parquet as pq

    for seed in (1,):
        alone = tmp_path / f"alone{seed}"
        assert main(["ppo", "--config", SMOKE, "--run-dir", str(alone), f"run.seed={seed}", *common]) == 0
        swept = read_metrics(sweep / f"seed={seed}" / "metrics.jsonl")
        solo = read_metrics(alone / "metrics.jsonl")
        assert [r["iteration"] for r in swept] == [r["iteration"] for r in solo] == list(range(1, 6))
        for s, a in zip(swept, solo):
            assert s["reward/mean"] == a["reward/mean"] and s["response/length_mean"] == a["response/length_mean"]
            for key in ("kl/mean", "policy/loss", "value/loss", "policy/grad_norm"):
                assert abs(s[key] - a[key]) <= 1e-4 * max(1.0, abs(a[key])), (seed, s["iteration"], key)
        for name in sorted(p.name for p in (alone / "samples").iterdir()):
            swept_rows = pq.read_table(sweep / f"seed={seed}" / "samples" / name).to_pylist()
            assert swept_rows == pq.read_table(alone / "samples" / name).to_pylist()


def test_overlapped_sweep_samples_each_run_one_version_behind_as_alone(tmp_path):
    """ppo.overlap in a sweep: each round's one call also samples every run's batch after its next one,
    under the adapter it holds before the round's updates, as a single overlapped run launches it when
    it takes the one before. A run equals its solo overlapped run (samples, rewards, sampled versions)."""
    common = ["ppo.iterations=3", "ppo.overlap=true", "cluster.layout=fused", "generate.decoder=lean"]
    sweep = tmp_path / "sweep"
    assert main(["sweep", "--config", SMOKE, "--run-dir", str(sweep), "--grid", "run.seed=[0,1]", *common]) == 0
    for seed in (1,):  # the second run of the round's call (the first is sampled the same way)
        alone = tmp_path / f"alone{seed}"
        assert main(["ppo", "--config", SMOKE, "--run-dir", str(alone), f"run.seed={seed}", *common]) == 0
        swept = read_metrics(sweep / f"seed={seed}" / "metrics.jsonl")
        solo = read_metrics(alone / "metrics.jsonl")
        assert [r["policy/sampled_version"] for r in swept] == [r["policy/sampled_version"] for r in solo] == [0, 0, 1]
        for s, a in zip(swept, solo):
            assert s["reward/mean"] == a["reward/mean"] and s["response/length_mean"] == a["response/length_mean"]
            for key in ("kl/mean", "policy/loss", "value/loss", "policy/grad_norm"):
                assert abs(s[key] - a[key]) <= 1e-4 * max(1.0, abs(a[key])), (seed, s["iteration"], key)
