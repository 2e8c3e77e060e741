"""The embedded arithmetic task on real Ray actors: configs/arithmetic_grpo.yaml (its GRPO settings and
its shipped exact-answer and format reward functions, by module name) on the tiny policy wearing
SmolLM2's chat template, two PPO iterations, then `rlhf-ray eval` reporting held-out accuracy for the
reference and the trained policy."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from rlhf_ray.cli import main
from rlhf_ray.data import arithmetic
from rlhf_ray.data.tables import is_heldout, split_key
from rlhf_ray.rewards.arithmetic import exact_answer
from rlhf_ray.runtime.metrics import read_metrics

pytestmark = pytest.mark.usefixtures("ray_session")

CONFIG = "configs/arithmetic_grpo.yaml"
TINY = [  # the task's config at the tiny model's size and speed
    "model.lora_r=4",
    "model.lora_alpha=8",
    "ppo.iterations=2",
    "ppo.batch_size=4",
    "ppo.mini_batch_size=4",
    "ppo.epochs=1",
    "ppo.checkpoint_every=1",
    "ppo.samples_every=1",
    "generate.max_new_tokens=4",
    "cluster.actor_cpus=0.25",
    "cluster.torch_threads=1",
    "eval.num_prompts=8",
    "eval.batch_size=8",
]


@pytest.mark.slow
def test_arithmetic_grpo_runs_and_eval_reports_accuracy(tmp_path, chat_lm, capsys):
    run = tmp_path / "run"
    overrides = [f"model.policy={chat_lm}", "data.dataset=arithmetic:ops=+-,max=40,n=400", *TINY]
    assert main(["ppo", "--config", CONFIG, "--run-dir", str(run), *overrides]) == 0
    metrics = read_metrics(run / "metrics.jsonl")
    assert [m["iteration"] for m in metrics] == [1, 2]
    for m in metrics:  # each shipped function scored every sample (a random policy is rarely right)
        assert 0.0 <= m["reward/accuracy/mean"] <= 1.0 and 0.0 <= m["reward/format/mean"] <= 1.0
        assert m["reward/none_frac"] == 0.0
    # the samples' accuracy scores are exact_answer of their own rows' answers
    table = pq.read_table(sorted((run / "samples").glob("*.parquet"))[-1]).to_pylist()
    answers = {
        r["prompt"][0]["content"]: r["answer"] for r in arithmetic.table("arithmetic:ops=+-,max=40,n=400").to_pylist()
    }
    for row in table:
        (question,) = [q for q in answers if q in row["prompt"]]
        assert row["score/accuracy"] == exact_answer([question], [row["response"]], answer=[answers[question]])[0]

    capsys.readouterr()
    assert main(["eval", str(run)]) == 0
    printed = capsys.readouterr().out
    result = json.loads((run / "eval.json").read_text())
    for side in ("reference", "policy"):
        assert result[side]["accuracy"] == result[side]["reward/accuracy/mean"]
        assert 0.0 <= result[side]["accuracy"] <= 1.0
    assert "| accuracy (exact answer) |" in printed
    # eval's problems are held-out ones, never drawn in training
    evaluated = pq.read_table(run / "eval_responses.parquet")["prompt"].to_pylist()
    held_out = {q for q in answers if is_heldout(split_key([{"role": "user", "content": q}]))}
    assert len(evaluated) == 2 * 8 and all(any(q in p for q in held_out) for p in evaluated)
    assert not any(q in row["prompt"] for q in held_out for row in table)
