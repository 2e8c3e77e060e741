"""What changes on a GPU, checked without one: dtypes, the planner that follows them, the per-role memory
cap, and the configs a GPU refuses (two learners on one card, reference log-probs not measured there)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rlhf_ray.config.load import load_config
from rlhf_ray.errors import ConfigError
from rlhf_ray.models import policy
from rlhf_ray.rewards.classifier import trained_dtype
from rlhf_ray.runtime.plan import make_plan


@pytest.mark.parametrize("quant", ["none", "8bit", "4bit"])
def test_policy_computes_in_bf16_on_a_gpu_whatever_the_quantization(quant):
    assert policy.load_kwargs(quant, "cuda", ["lm_head"], policy.policy_dtype("cuda"))["dtype"] == torch.bfloat16
    assert policy.load_kwargs(quant, "cpu", ["lm_head"], policy.policy_dtype("cpu"))["dtype"] == torch.float32


def test_planner_counts_a_checkpoint_policy_in_bf16_on_a_gpu(tiny_lm):
    """tiny-random-llama is a checkpoint (not a shape): its embeddings and head are 2 bytes in a GPU plan."""
    cfg = load_config("configs/smoke.yaml", ["model.quant=8bit", "reward.model=tiny-random-bert"])
    host = make_plan(cfg, choose=False).layouts["fused"].roles["policy"]
    gpu = make_plan(cfg, gpu_memory_gb=24, choose=False).layouts["fused"].roles["policy"]
    config = json.loads((Path(tiny_lm) / "config.json").read_text())
    dense_params = 2 * config["vocab_size"] * config["hidden_size"]  # embeddings + untied LM head (at least)
    assert host.base - gpu.base >= 2 * dense_params  # 4 -> 2 bytes each
    assert gpu.kv_cache < host.kv_cache  # the KV cache is bf16 too


def test_reward_model_keeps_the_dtype_it_was_trained_in(tmp_path, tiny_classifier):
    assert trained_dtype(tiny_classifier) == torch.float32  # its config says float32
    (tmp_path / "config.json").write_text(json.dumps({"dtype": "bfloat16"}))
    assert trained_dtype(tmp_path) == torch.bfloat16
    (tmp_path / "config.json").write_text(json.dumps({"torch_dtype": "float16"}))  # transformers 4.x spelling
    assert trained_dtype(tmp_path) == torch.float16
    (tmp_path / "config.json").write_text("{}")
    assert trained_dtype(tmp_path) == torch.float32  # unsaid: fp32
    assert trained_dtype(tmp_path / "not-there") == torch.float32  # a hub id: fp32


def test_role_device_stays_on_cpu_without_cuda_and_caps_a_shared_card(monkeypatch):
    assert policy.role_device(0.5) == "cpu"  # declared GPU share, no CUDA here: no cap, no CUDA call
    assert policy.cap_gpu_share(0.5) is None
    # A card cannot be shared on this machine: record what the CUDA calls would be given.
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", lambda f, d: calls.append((f, d)))
    assert policy.role_device(0.25) == "cuda" and calls == [(0.25, 0)]
    assert policy.role_device(1.0) == "cuda" and calls == [(0.25, 0)]  # a whole card: no cap
    assert policy.role_device(0) == "cpu" and len(calls) == 1


@pytest.mark.parametrize(
    "overrides, key",
    [
        (["cluster.num_learners=2", "cluster.learner_gpus=0.5"], "cluster.learner_gpus"),
        (["cluster.num_learners=2", "cluster.learner_gpus=0.25"], "cluster.learner_gpus"),
        (["generate.reference_logprobs=true", "cluster.generator_gpus=0.5"], "generate.reference_logprobs"),
        (["generate.reference_logprobs=true", "cluster.learner_gpus=1"], "generate.reference_logprobs"),
    ],
)
def test_gpu_configs_refused_in_one_line(overrides, key):
    with pytest.raises(ConfigError) as err:
        load_config("configs/smoke.yaml", ["ppo.mini_batch_size=4", *overrides])
    message = str(err.value)
    assert err.value.key == key and "\n" not in message
    if key == "cluster.learner_gpus":
        assert "cluster.num_learners" in message  # names both keys


@pytest.mark.parametrize(
    "overrides",
    [
        ["cluster.num_learners=2", "cluster.learner_gpus=0.55"],  # one card each
        ["cluster.num_learners=2", "cluster.learner_gpus=0"],  # CPU learners (gloo)
        ["generate.reference_logprobs=true"],  # on the CPU, measured
    ],
)
def test_gpu_configs_that_stay_allowed(overrides):
    load_config("configs/smoke.yaml", ["ppo.mini_batch_size=4", *overrides])
