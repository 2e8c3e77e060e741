"""The README's "Bring your own task" stays true: its command is a valid config whose function
source loads, and the example reward function scores the example dataset's rows."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

from rlhf_ray.config.load import load_config
from rlhf_ray.rewards.base import RewardBatch
from rlhf_ray.rewards.functions import call, function_ref, load_function
from rlhf_ray.rewards.sources import check_sources

REPO = Path(__file__).resolve().parents[2]


def _readme_command() -> list[str]:
    text = (REPO / "README.md").read_text().split("## Bring your own task", 1)[1]
    block = re.search(r"```bash\n(.*?)```", text, re.S).group(1)
    return shlex.split(block.replace("\\\n", " "))


def test_the_readme_command_is_a_valid_run(tmp_path, monkeypatch):
    argv = _readme_command()
    assert argv[:2] == [".venv/bin/rlhf-ray", "ppo"]
    overrides = [a for a in argv if "=" in a and not a.startswith("-")]
    monkeypatch.chdir(REPO)  # the command's paths are relative to the repository
    cfg = load_config(None, overrides)
    assert cfg.data.dataset == "examples/chat_tasks.jsonl" and cfg.reward.sources[0].kind == "function"
    check_sources(cfg)  # the file exists and names a callable
    # What made it learn (README, docs/benchmarks.md): room for SmolLM2's "7 + 4 = 11." and more,
    # problems enough for groups with a right and a wrong answer in every batch; with 3 prompts and
    # 12 tokens every answer was cut off before its number and the reward stayed 0.
    rows = (REPO / cfg.data.dataset).read_text().splitlines()
    assert cfg.generate.max_new_tokens >= 24 and len(rows) >= 4 * cfg.ppo.batch_size
    assert cfg.algo.advantage == "grpo" and cfg.ppo.iterations >= 10


def test_the_example_reward_scores_the_example_rows(tmp_path):
    rows = [json.loads(line) for line in (REPO / "examples/chat_tasks.jsonl").read_text().splitlines()][:3]
    fn = load_function(function_ref("k", str(REPO / "examples/reward_fn.py") + ":exact_answer"), tmp_path)
    completions = ["The answer is 42.", "It travels 180 km", "I think 71"]
    batch = RewardBatch([r["prompt"] for r in rows], completions, {"answer": [r["answer"] for r in rows]})
    assert call(fn, batch) == [1.0, 1.0, 0.0]
