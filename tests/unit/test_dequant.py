"""model.dequant_cache: int8 weights dequantized once compute the same function as
bitsandbytes' per-matmul dequantization, bit for bit (same samples, same log-probs, same gradients)."""

import pytest
import torch

from rlhf_ray.actors.common import load_policy
from rlhf_ray.config.load import load_config
from rlhf_ray.models.dequant import dequant_enabled, dequantized_bytes, dequantized_int8, int8_layers
from rlhf_ray.models.forward import response_stats
from rlhf_ray.models.generate import sample, sample_with_reference
from rlhf_ray.models.policy import load_tokenizer, ppo_numerics


@pytest.fixture(scope="module")
def policy(tiny_lm):
    cfg = load_config("configs/smoke.yaml")
    torch.manual_seed(0)
    model = ppo_numerics(load_policy(cfg, tiny_lm, "cpu"))
    with torch.no_grad():  # a non-zero adapter, so LoRA's share of each layer is exercised too
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    return model, load_tokenizer(tiny_lm)


PROMPTS = ["This movie was", "I did not like", "The actors"]


def test_samples_and_logprobs_are_bit_identical(policy):
    model, tok = policy
    kw = dict(max_new_tokens=8, temperature=0.9, seed=7, group_size=2)
    plain = sample(model, tok, PROMPTS, **kw)
    with dequantized_int8(model) as layers:
        cached = sample(model, tok, PROMPTS, **kw)
        with_ref = sample_with_reference(model, tok, PROMPTS, **kw)
    assert layers == len(int8_layers(model)) > 0
    assert torch.equal(plain.response_ids, cached.response_ids)
    assert torch.equal(plain.response_ids, with_ref.response_ids)
    args = (plain.input_ids, plain.attention_mask, plain.prompt_ids.shape[1])
    ref = response_stats(model, *args, chunk=4, temperature=0.9).logprobs
    with dequantized_int8(model):
        got = response_stats(model, *args, chunk=4, temperature=0.9).logprobs
    assert torch.equal(ref, got)


def test_gradients_are_bit_identical_and_the_layers_are_restored(policy):
    model, tok = policy
    rollout = sample(model, tok, PROMPTS, max_new_tokens=6, seed=1)
    args = (rollout.input_ids, rollout.attention_mask, rollout.prompt_ids.shape[1])
    lora = [p for n, p in model.named_parameters() if p.requires_grad]

    def grads():
        model.zero_grad(set_to_none=True)
        response_stats(model, *args, chunk=4).logprobs.sum().backward()
        return [p.grad.clone() for p in lora]

    plain = grads()
    with dequantized_int8(model):
        cached = grads()
    assert all(torch.equal(a, b) for a, b in zip(plain, cached))
    assert all("forward" not in vars(m) for m in int8_layers(model))  # the patch is gone after the block


def test_auto_resolves_by_memory_and_off_is_off(policy):
    model, _ = policy
    assert dequantized_bytes(model) == sum(m.weight.numel() * 4 for m in int8_layers(model))
    assert dequant_enabled("auto", model) and dequant_enabled("on", model)
    assert not dequant_enabled("off", model)
    with dequantized_int8(model, enabled=False) as layers:
        assert layers == 0


def test_the_fp32_copy_is_kept_across_blocks_and_redone_for_new_int8_weights(policy):
    """A role enters the block every iteration: the copy is computed once for the run (the base is
    frozen), and again only if a layer's int8 weights are replaced."""
    from rlhf_ray.models.dequant import CACHE

    model, tok = policy
    rollout = sample(model, tok, PROMPTS, max_new_tokens=4, seed=1)
    args = (rollout.input_ids, rollout.attention_mask, rollout.prompt_ids.shape[1])
    layer = int8_layers(model)[0]
    with dequantized_int8(model):
        first = response_stats(model, *args).logprobs
    kept = vars(layer)[CACHE][torch.float32][1]
    with dequantized_int8(model):
        assert torch.equal(response_stats(model, *args).logprobs, first)
    assert vars(layer)[CACHE][torch.float32][1] is kept  # not recomputed
    saved = layer.state.CB
    layer.state.CB = saved.clone()  # new int8 weights (same values): the copy follows them
    try:
        with dequantized_int8(model):
            response_stats(model, *args)
        assert vars(layer)[CACHE][torch.float32][1] is not kept
        assert torch.equal(vars(layer)[CACHE][torch.float32][1], kept)
    finally:
        layer.state.CB = saved
