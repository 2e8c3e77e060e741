"""Every shipped config loads and validates, so none goes stale."""

from __future__ import annotations

from pathlib import Path

import pytest

from rlhf_ray.config.load import load_config
from rlhf_ray.data.prompts import prompt_set
from rlhf_ray.models.policy import load_tokenizer
from rlhf_ray.rewards.arithmetic import EXACT_ANSWER
from rlhf_ray.rewards.sources import check_sources

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))


def test_configs_exist():
    assert {p.name for p in CONFIGS} >= {"default.yaml", "smoke.yaml", "single_gpu_24gb.yaml"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_validates(path):
    load_config(path)


def test_single_gpu_layout_fits_one_card():
    c = load_config(Path(CONFIGS[0]).parent / "single_gpu_24gb.yaml").cluster
    shares = c.num_generators * c.generator_gpus + c.num_scorers * c.scorer_gpus + c.num_learners * c.learner_gpus
    assert 0 < shares <= 1.0


def test_cluster_gpu_layout_fills_whole_workers_and_keeps_learners_apart():
    c = load_config(Path(CONFIGS[0]).parent / "cluster_gpu.yaml").cluster
    assert c.num_generators == c.num_scorers == c.num_learners == 2
    # one replica of each role per 1-GPU worker; NCCL needs the two learners on different GPUs
    assert c.generator_gpus + c.scorer_gpus + c.learner_gpus == pytest.approx(1.0)
    assert c.learner_gpus > 0.5 and c.placement_strategy == "SPREAD"


def test_arithmetic_grpo_is_the_verifiable_task(smollm2):
    """GRPO on the embedded arithmetic problems, scored by the shipped exact-answer function (eval's
    accuracy), with enough held-out problems for a figure and prompts the policy's template renders."""
    cfg = load_config(Path(CONFIGS[0]).parent / "arithmetic_grpo.yaml")
    assert cfg.algo.advantage == "grpo" and cfg.model.policy == "smollm2-135m-instruct"
    assert cfg.data.dataset.startswith("arithmetic") and cfg.data.chat_template == "auto"
    assert EXACT_ANSWER in [s.function for s in cfg.reward.source_list()]
    check_sources(cfg)  # the functions import by module name
    tokenizer = load_tokenizer(smollm2)
    train, heldout = prompt_set(cfg, tokenizer, "train"), prompt_set(cfg, tokenizer, "heldout")
    assert len(heldout) >= 64 and len(train) >= cfg.ppo.batch_size
    assert all(text.startswith("<|im_start|>") for text in train.texts)
