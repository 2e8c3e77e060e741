"""Device discipline without a GPU: the learner's experience and loss path and the fused host's phases
run with the model on a pretend CUDA device (tests/fake_cuda.py), so an op that mixes a CUDA tensor
with a CPU one fails here as it would on the first GPU run. What crosses actors stays on the CPU."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from rlhf_ray.actors.fused import FusedPolicyHost
from rlhf_ray.actors.learner import Learner
from rlhf_ray.config.load import load_config

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fake_cuda import DeviceMismatch, FakeCuda, move_to_cuda, tag_cpu, tag_of  # noqa: E402

PROMPTS = ["This movie was", "The plot", "I loved the", "Awful acting and"]


def _on_fake_cuda(*roles) -> None:
    """What role_device('cuda') and .to(device) would have done at construction."""
    for role in roles:
        role.device = "cuda"
        move_to_cuda(role.model, *([role.value_head] if getattr(role, "value_head", None) is not None else []))


def _payload_tensors(rollout) -> list[torch.Tensor]:
    names = ("prompt_ids", "prompt_mask", "response_ids", "response_mask", "ref_logprobs")
    return [getattr(rollout, n) for n in names if getattr(rollout, n) is not None]


def test_the_pretend_device_catches_a_mix_and_allows_what_cuda_allows():
    with FakeCuda():
        on_gpu, host = torch.ones(2, 3, device="cuda"), tag_cpu(torch.ones(2, 3))
        with pytest.raises(DeviceMismatch, match="same device"):
            on_gpu * host
        assert tag_of(on_gpu * host.to("cuda")) == "cuda"
        assert tag_of(on_gpu * host.sum()) == "cuda"  # a CPU scalar mixes with CUDA tensors
        assert tag_of(on_gpu[torch.tensor([1])]) == "cuda"  # CPU indices index a CUDA tensor
        assert tag_of(on_gpu.cpu()) == "cpu" and tag_of(on_gpu) == "cuda"


@pytest.mark.parametrize(
    "overrides",
    [
        ["algo.advantage=gae"],  # critic: shaped rewards, GAE, value loss
        ["algo.advantage=grpo", "generate.reference_logprobs=true"],  # group advantages, generator's ref log-probs
        ["algo.advantage=gae", "ppo.micro_batch_tokens=16"],  # token-packed micro-batches
    ],
    ids=["gae", "grpo-generator-ref", "gae-token-micro-batches"],
)
def test_fused_host_phases_on_a_cuda_device(tiny_lm, overrides):
    cfg = load_config(
        "configs/smoke.yaml", ["cluster.layout=fused", "ppo.epochs=1", "model.gradient_checkpointing=true", *overrides]
    )
    host = FusedPolicyHost(cfg, tiny_lm)
    _on_fake_cuda(host.learner, host.generator)
    prompts = PROMPTS[: cfg.ppo.batch_size]
    with FakeCuda() as mode:
        payload, _ = host.publish()
        host.load_adapter(payload)
        rollout, _ = host.generate(prompts, iteration=1)
        assert all(tag_of(t) == "cpu" for t in _payload_tensors(rollout))  # the object store gets CPU tensors
        scores = tag_cpu(torch.randn(len(rollout)))
        metrics, new = host.learn([tag_cpu(rollout)], [scores], iteration=1)
    assert mode.ops > 1000  # the whole model ran under the pretend device
    assert metrics["policy/version"] == 1 and new.version == 1
    assert all(tag_of(p) == "cuda" for p in host.learner.optimizer.param_groups[0]["params"])


def test_separate_learner_on_a_cuda_device_takes_cpu_rollouts(tiny_lm):
    """The separate layout's learner: rollouts and scores arrive from other actors on the CPU."""
    from rlhf_ray.actors.generator import Generator

    cfg = load_config("configs/smoke.yaml", ["algo.advantage=gae", "ppo.epochs=1"])
    learner = Learner(cfg, tiny_lm)
    gen = Generator(cfg, tiny_lm)
    gen.load_adapter(learner.adapter())
    rollout, _ = gen.generate(PROMPTS, iteration=1)  # sampled on the CPU, as another actor would
    _on_fake_cuda(learner)
    with FakeCuda():
        metrics, _ = learner.learn([tag_cpu(rollout)], [tag_cpu(torch.randn(len(rollout)))], iteration=1)
    assert metrics["policy/version"] == 1
