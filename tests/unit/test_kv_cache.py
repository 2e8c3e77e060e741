"""Sampling decodes with a KV cache although the policy is in train mode with gradient checkpointing on
(the fused host's state), on this transformers and on older ones that drop the cache whenever
`gradient_checkpointing and training` (emulated below, as transformers 4.x decoder layers did)."""

from __future__ import annotations

import pytest
import torch

from rlhf_ray.actors.common import load_policy
from rlhf_ray.config.load import load_config
from rlhf_ray.models.generate import sample, sample_with_reference
from rlhf_ray.models.policy import causal_lm_of, load_tokenizer, ppo_numerics

PROMPTS = ["This movie was", "The plot of the film"]
NEW_TOKENS = 5


@pytest.fixture(scope="module")
def policy(tiny_lm):
    cfg = load_config("configs/smoke.yaml", ["model.gradient_checkpointing=true"])
    torch.manual_seed(0)
    model = ppo_numerics(load_policy(cfg, tiny_lm, "cpu"))
    assert model.training and causal_lm_of(model).is_gradient_checkpointing
    return model, load_tokenizer(tiny_lm)


def _layers(model):
    from transformers.modeling_layers import GradientCheckpointingLayer

    return [m for m in causal_lm_of(model).modules() if isinstance(m, GradientCheckpointingLayer)]


class DecodeProbe:
    """Per forward of the first decoder layer: new tokens in, and tokens already in the cache it was given."""

    def __init__(self, model, old_transformers: bool):
        self.new, self.cached, self.handles = [], [], []
        layers = _layers(model)
        assert layers, "no checkpointable decoder layers found"
        if old_transformers:
            for layer in layers:
                self.handles.append(layer.register_forward_pre_hook(self._drop_cache, with_kwargs=True))
        self.handles.append(layers[0].register_forward_pre_hook(self._record, with_kwargs=True))

    @staticmethod
    def _drop_cache(module, args, kwargs):
        # transformers 4.x: `if self.gradient_checkpointing and self.training:` drop the cache, grads or not.
        if module.gradient_checkpointing and module.training:
            return args, {**kwargs, "use_cache": False, "cache": None, "past_key_values": None}
        return None

    def _record(self, module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        self.new.append(hidden.shape[1])
        self.cached.append(cache.get_seq_length(0) if cache is not None else 0)

    def close(self):
        for h in self.handles:
            h.remove()


@pytest.mark.parametrize("old_transformers", [False, True], ids=["this-transformers", "drops-cache-when-checkpointing"])
@pytest.mark.parametrize("sampler", [sample, sample_with_reference], ids=["generate", "with-reference"])
def test_each_decode_step_feeds_one_new_token_against_the_cache(policy, sampler, old_transformers):
    model, tokenizer = policy
    probe = DecodeProbe(model, old_transformers)
    try:
        rollout = sampler(model, tokenizer, PROMPTS, max_new_tokens=NEW_TOKENS, seed=1)
    finally:
        probe.close()
    prompt_len = rollout.prompt_ids.shape[1]
    steps = rollout.response_ids.shape[1]  # the last sampled token is never fed back
    assert probe.new == [prompt_len] + [1] * (steps - 1)
    assert probe.cached == [0] + [prompt_len + i for i in range(steps - 1)]
    # Restored for training: checkpointing on again, in train mode.
    assert all(layer.gradient_checkpointing for layer in _layers(model)) and model.training


def test_sampled_tokens_score_the_same_as_a_full_forward(policy):
    """With the cache right, the sampler's distribution at each step is the full-sequence forward's."""
    from rlhf_ray.models.forward import response_stats

    model, tokenizer = policy
    rollout, scores = sample(model, tokenizer, PROMPTS, max_new_tokens=NEW_TOKENS, seed=2, return_logits=True)
    sampled = torch.log_softmax(scores, -1).gather(-1, rollout.response_ids[..., None]).squeeze(-1)
    with torch.no_grad():
        full = response_stats(model, rollout.input_ids, rollout.attention_mask, rollout.prompt_ids.shape[1])
    torch.testing.assert_close(sampled * rollout.response_mask, full.logprobs, atol=2e-4, rtol=0)
