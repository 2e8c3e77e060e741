"""A user's chat dataset on real Ray actors: a JSONL of message-list prompts with an `answer` column
drives a short PPO run (the tiny policy wearing SmolLM2's real chat template) whose reward function
reads each sample's raw messages and answer, carried by the rollouts from generator to scorer."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from rlhf_ray.cli import main
from rlhf_ray.config.load import load_config
from rlhf_ray.models.policy import load_tokenizer
from rlhf_ray.runtime.metrics import read_metrics

pytestmark = pytest.mark.usefixtures("ray_session")

SMOKE = "configs/smoke.yaml"
SYSTEM = {"role": "system", "content": "Answer with the number only."}
ROWS = [
    {"prompt": [SYSTEM, {"role": "user", "content": f"What is {a} + {b}?"}], "answer": str(a + b)}
    for a, b in [(2, 3), (7, 5), (10, 4), (6, 6), (9, 1), (3, 8), (12, 7), (4, 4), (15, 2), (8, 9)]
]


@pytest.fixture
def dataset(tmp_path) -> str:
    path = tmp_path / "tasks.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return str(path)


REWARD_FN = """
def answer_value(prompts, completions, answer, **columns):
    # the row's answer as its reward, where the scorer got the dataset's message-list prompt
    return [float(a) if isinstance(p, list) else None for p, a in zip(prompts, answer)]
"""


@pytest.mark.slow
def test_chat_jsonl_drives_ppo_and_rewards_read_the_answer_column(tmp_path, chat_lm, dataset):
    function = tmp_path / "rewards.py"
    function.write_text(REWARD_FN)
    config = yaml.safe_load(Path(SMOKE).read_text())
    config["reward"]["sources"] = [{"kind": "function", "function": f"{function}:answer_value"}]
    config_path = tmp_path / "chat.yaml"
    config_path.write_text(yaml.safe_dump(config))
    overrides = [f"model.policy={chat_lm}", f"data.dataset={dataset}"]
    short = ["ppo.iterations=1", "ppo.epochs=1", "generate.max_new_tokens=4"]  # the data path, not the training
    run = tmp_path / "run"
    assert main(["ppo", "--config", str(config_path), "--run-dir", str(run), *overrides, *short]) == 0
    assert [r["iteration"] for r in read_metrics(run / "metrics.jsonl")] == [1]
    cfg = load_config(str(config_path), overrides)
    tokenizer = load_tokenizer(chat_lm)
    rendered = {tokenizer.apply_chat_template(r["prompt"], add_generation_prompt=True, tokenize=False): r for r in ROWS}
    (samples,) = sorted((run / "samples").glob("*.parquet"))
    table = pq.read_table(samples)
    prompts, scores = table["prompt"].to_pylist(), table["score"].to_pylist()
    # the policy read the dataset's prompts through the chat template (smoke: 4 prompts x group of 2) ...
    assert len(prompts) == cfg.ppo.batch_size * cfg.samples_per_prompt() and set(prompts) <= set(rendered)
    # ... and the reward function got each sample's own row: its raw messages and its answer
    assert scores == [float(rendered[p]["answer"]) for p in prompts]
