"""Multi-turn runs on the session's real local Ray: a user's environment file and tool file through
`rlhf-ray ppo` on the separate layout (two generators, two data-parallel learners) and the fused one,
`eval` and `generate` over the run, and a run
whose generator is killed mid-run and whose driver is SIGKILLed that resumes to the metrics of an
uninterrupted one."""

from __future__ import annotations

import json
import signal

import pyarrow.parquet as pq
import pytest
import ray
from driver_process import comparable, logged, start_driver, wait_for_iteration

from rlhf_ray.cli import main
from rlhf_ray.runtime.metrics import read_metrics
from rlhf_ray.runtime.recovery import read_events

pytestmark = pytest.mark.usefixtures("ray_session")

FIXTURES = "tests/env_fixtures.py"
SPREAD = ("cluster.num_generators=2", "cluster.num_learners=2")  # two shards of episodes, data-parallel learners


def env_args(policy: str, *extra: str) -> list[str]:
    return [
        "--config", "configs/smoke.yaml", f"model.policy={policy}", "ppo.iterations=3",
        f"env.factory={FIXTURES}:Countdown", f"env.tools=[{FIXTURES}:add]", "env.max_turns=3", "env.max_tokens=40",
        "generate.max_new_tokens=6", "reward.sources=[{kind: env, name: env}, {kind: function, name: turns, "
        f"weight: 0.5, function: '{FIXTURES}:transcript_turns'}}]", *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def reference(tiny_chat_lm, tmp_path_factory) -> list[dict]:
    run = tmp_path_factory.mktemp("env-reference") / "run"
    assert main(["ppo", "--run-dir", str(run), *env_args(tiny_chat_lm, *SPREAD)]) == 0
    return read_metrics(run / "metrics.jsonl")


def test_separate_layout_learns_from_episodes_and_logs_how_they_went(reference):
    assert len(reference) == 3
    for row in reference:
        assert 1 <= row["env/turns_mean"] <= 3
        assert sum(row[f"env/stop/{r}"] for r in ("done", "max_turns", "max_tokens", "timeout", "env_error")) == 1
        assert "reward/env/mean" in row and "reward/turns/mean" in row and "env/tool_calls_mean" in row
        assert row["response/length_mean"] <= 40


@pytest.mark.soak  # `make test-all`: test_recovery.py and test_supervisor.py cover the recoveries of a single-turn run
def test_killed_generator_and_sigkilled_driver_resume_to_the_same_metrics(tiny_chat_lm, tmp_path, reference):
    run = tmp_path / "run"
    driver = start_driver(run, env_args(tiny_chat_lm, *SPREAD), tmp_path / "driver.log")
    try:
        wait_for_iteration(run, 1, driver)
        (name,) = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                   if a["namespace"] == "rlhf_ray" and a["name"].endswith("/generator-0")]  # fmt: skip
        ray.kill(ray.get_actor(name, namespace="rlhf_ray"))  # mid-run: recovered in the run
        wait_for_iteration(run, 2, driver)
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=30)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert {1, 2} <= logged(run / "metrics.jsonl")
    assert main(["ppo", "--resume", str(run)]) == 0
    assert comparable(read_metrics(run / "metrics.jsonl")) == comparable(reference)
    assert any(e.get("event") == "restart" or "generator" in json.dumps(e) for e in read_events(run / "events.jsonl"))


def test_fused_layout_then_eval_and_generate_over_episodes(tiny_chat_lm, tmp_path, capsys):
    run = tmp_path / "fused"
    args = env_args(tiny_chat_lm, "cluster.layout=fused", "algo.advantage=grpo", "ppo.iterations=2")
    assert main(["ppo", "--run-dir", str(run), *args]) == 0
    rows = read_metrics(run / "metrics.jsonl")
    assert len(rows) == 2 and all("env/turns_mean" in r for r in rows)
    responses = pq.read_table(run / "samples" / "iter-000002.parquet")["response"].to_pylist()
    assert any("[user]" in r for r in responses)  # observations marked in the saved transcripts
    assert main(["eval", str(run), "eval.num_prompts=8"]) == 0
    result = json.loads((run / "eval.json").read_text())
    for side in ("reference", "policy"):
        assert result[side]["env/turns_mean"] >= 1 and "env/reward_mean" in result[side]
    capsys.readouterr()
    assert main(["generate", "--adapter", str(run), "--prompt", "Count down"]) == 0
    out = capsys.readouterr().out
    assert "[episode:" in out and "start 0" in out and "[user] 1 left" in out
