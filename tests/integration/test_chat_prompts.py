"""A user's chat dataset on real Ray actors: a JSONL of message-list prompts with an `answer` column
drives a short PPO run (the tiny policy wearing SmolLM2's real chat template), and a generator actor's
rollout comes back through the object store carrying each row's raw prompt and answer."""

from __future__ import annotations

import json
import shutil

import pyarrow.parquet as pq
import pytest
import ray

from rlhf_ray.actors.generator import Generator
from rlhf_ray.actors.remote import GeneratorActor
from rlhf_ray.cli import main
from rlhf_ray.config.schema import load_config
from rlhf_ray.data.prompts import prompt_stream
from rlhf_ray.models.adapter import export_adapter
from rlhf_ray.models.policy import load_tokenizer
from rlhf_ray.runtime.metrics import read_metrics
from rlhf_ray.store.artifacts import share

pytestmark = pytest.mark.usefixtures("ray_session")

SMOKE = "configs/smoke.yaml"
SYSTEM = {"role": "system", "content": "Answer with the number only."}
ROWS = [
    {"prompt": [SYSTEM, {"role": "user", "content": f"What is {a} + {b}?"}], "answer": str(a + b)}
    for a, b in [(2, 3), (7, 5), (10, 4), (6, 6), (9, 1), (3, 8), (12, 7), (4, 4), (15, 2), (8, 9)]
]


@pytest.fixture(scope="module")
def chat_lm(tiny_lm, smollm2, tmp_path_factory) -> str:
    """The tiny random Llama with SmolLM2's real chat template: chat prompts at tiny-model speed."""
    out = tmp_path_factory.mktemp("chat-lm") / "model"
    shutil.copytree(tiny_lm, out)
    tokenizer = load_tokenizer(str(out))
    tokenizer.chat_template = load_tokenizer(smollm2).chat_template
    tokenizer.save_pretrained(out)
    return str(out)


@pytest.fixture
def dataset(tmp_path) -> str:
    path = tmp_path / "tasks.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return str(path)


@pytest.mark.slow
def test_chat_jsonl_drives_ppo_and_rollouts_carry_the_answer_column(tmp_path, chat_lm, dataset):
    overrides = [f"model.policy={chat_lm}", f"data.dataset={dataset}"]
    run = tmp_path / "run"
    short = ["ppo.iterations=1", "ppo.epochs=1", "generate.max_new_tokens=4"]  # the data path, not the training
    assert main(["ppo", "--config", SMOKE, "--run-dir", str(run), *overrides, *short]) == 0
    assert [r["iteration"] for r in read_metrics(run / "metrics.jsonl")] == [1]
    cfg = load_config(SMOKE, overrides)
    tokenizer = load_tokenizer(chat_lm)
    rendered = {tokenizer.apply_chat_template(r["prompt"], add_generation_prompt=True, tokenize=False): r for r in ROWS}
    (samples,) = sorted((run / "samples").glob("*.parquet"))
    prompts = pq.read_table(samples)["prompt"].to_pylist()
    # the policy read the dataset's prompts through the chat template (smoke: 4 prompts x group of 2)
    assert len(prompts) == cfg.ppo.batch_size * cfg.samples_per_prompt() and set(prompts) <= set(rendered)

    # A generator actor's rollout, through the object store, carries each row's raw prompt and answer.
    local = Generator(cfg, chat_lm)  # only to make an adapter payload of the right shape
    actor = GeneratorActor.options(num_cpus=0.25).remote(cfg, share(chat_lm))
    try:
        ray.get(actor.load_adapter.remote(export_adapter(local.model, 0)), timeout=300)
        drawn = prompt_stream(cfg, tokenizer).next(cfg.ppo.batch_size)
        rollout_ref, _ = actor.generate.options(num_returns=2).remote(drawn, 1)
        rollout = ray.get(rollout_ref, timeout=300)
    finally:
        ray.kill(actor)
    group = cfg.samples_per_prompt()
    assert rollout.prompts == [p.text for p in drawn for _ in range(group)]
    assert all(rendered[text]["prompt"] == raw for text, raw in zip(rollout.prompts, rollout.raw_prompts))
    assert rollout.columns == {"answer": [rendered[text]["answer"] for text in rollout.prompts]}
