"""The README's "Bring your own task" command runs as written on real Ray actors: its dataset, its
reward function file and its GRPO settings, with only the model and the run's length and size
swapped for the tiny policy wearing SmolLM2's chat template (that SmolLM2 itself learns the task
with this command is measured, not tested: README and docs/benchmarks.md)."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from rlhf_ray.cli import main
from rlhf_ray.runtime.metrics import read_metrics

pytestmark = pytest.mark.usefixtures("ray_session")

REPO = Path(__file__).resolve().parents[2]
TINY = [  # appended to the README's command: later overrides win
    "ppo.iterations=1",
    "model.lora_r=4",
    "model.lora_alpha=8",
    "generate.max_new_tokens=4",
    "cluster.actor_cpus=0.25",
    "cluster.torch_threads=1",
]


def readme_command() -> list[str]:
    text = (REPO / "README.md").read_text().split("## Bring your own task", 1)[1]
    block = re.search(r"```bash\n(.*?)```", text, re.S).group(1)
    return shlex.split(block.replace("\\\n", " "))


@pytest.mark.slow
def test_the_readme_task_command_runs_and_scores_its_rows(tmp_path, chat_lm, monkeypatch):
    argv = readme_command()
    assert argv[:2] == [".venv/bin/rlhf-ray", "ppo"]
    args = argv[1:]  # ppo --run-dir ... (the executable is main itself)
    args[args.index("--run-dir") + 1] = str(tmp_path / "run")
    monkeypatch.chdir(REPO)  # the command's paths are relative to the repository
    assert main([*args, f"model.policy={chat_lm}", *TINY]) == 0
    (metrics,) = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert 0.0 <= metrics["reward/mean"] <= 1.0 and metrics["reward/none_frac"] == 0.0
    rows = [json.loads(line) for line in (REPO / "examples" / "chat_tasks.jsonl").read_text().splitlines()]
    answers = {r["prompt"][-1]["content"]: r["answer"] for r in rows}
    samples = pq.read_table(tmp_path / "run" / "samples" / "iter-000001.parquet").to_pylist()
    for row in samples:  # each sample was scored by the example function against its own row's answer
        (question,) = [q for q in answers if q in row["prompt"]]
        numbers = re.findall(r"-?\d+(?:\.\d+)?", row["response"].replace(",", ""))
        assert row["score"] == (1.0 if numbers and float(numbers[-1]) == float(answers[question]) else 0.0)
