"""One sampling distribution: what the generator samples from is what the learner's log-probs describe.

Every check here compares against an independent computation (the plain model forward, or the
scores `generate` itself sampled from), never response_stats against itself."""

from __future__ import annotations

import pytest
import torch
from transformers import GenerationConfig

from rlhf_ray.models.forward import response_stats
from rlhf_ray.models.generate import sample
from rlhf_ray.models.policy import attach_lora, causal_lm_of, load_causal_lm, load_tokenizer, ppo_numerics

PROMPTS = ["This movie was", "Honestly the plot of this film", "I"]  # lengths differ: left padding
TEMPERATURE = 0.7


def perturbed_policy(path, quant="8bit", targets=None, layers=None):
    """A policy whose adapter matters (random LoRA B), in PPO's numerics; test_decode uses it too."""
    torch.manual_seed(0)
    base = load_causal_lm(path, quant, "cpu")
    model = ppo_numerics(attach_lora(base, r=4, alpha=8, dropout=0.0, targets=targets, layers=layers))
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:  # a fresh LoRA equals the base; make the adapter matter
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    return model


@pytest.fixture(scope="module")
def policy(tiny_lm):
    return perturbed_policy(tiny_lm), load_tokenizer(tiny_lm)


def _learner_logprobs(model, rollout, temperature, chunk=64):
    with torch.no_grad():
        return response_stats(
            model,
            rollout.input_ids,
            rollout.attention_mask,
            rollout.prompt_ids.shape[1],
            chunk=chunk,
            temperature=temperature,
        ).logprobs


def test_logprobs_match_plain_forward_of_each_unpadded_row(policy):
    """Independent reference: model(ids).logits of one row without any padding, shifted by one."""
    model, tokenizer = policy
    rollout = sample(model, tokenizer, PROMPTS, max_new_tokens=6, temperature=TEMPERATURE, seed=3)
    assert len(set(rollout.prompt_mask.sum(1).tolist())) > 1, "prompts must have different lengths"
    batched = _learner_logprobs(model, rollout, TEMPERATURE, chunk=4)
    for row in range(len(rollout)):
        prompt = rollout.prompt_ids[row][rollout.prompt_mask[row].bool()]
        n = int(rollout.response_mask[row].sum())
        response = rollout.response_ids[row, :n]
        ids = torch.cat([prompt, response])[None]
        with torch.no_grad():
            logits = causal_lm_of(model)(input_ids=ids).logits[0].float()
        # logits at position t predict token t + 1: response token j is predicted at len(prompt) + j - 1
        pred = logits[len(prompt) - 1 : len(prompt) - 1 + n] / TEMPERATURE
        expected = torch.log_softmax(pred, -1).gather(-1, response[:, None]).squeeze(-1)
        torch.testing.assert_close(batched[row, :n], expected, atol=2e-4, rtol=2e-4)
        assert bool((batched[row, n:] == 0).all())  # padding contributes nothing


def test_learner_logprobs_are_the_generators_sampling_distribution(policy):
    """generate's own processed scores (what it sampled from) vs the learner's log-probs, with a
    model whose generation_config.json carries a repetition penalty and top_k that must not apply."""
    model, tokenizer = policy
    lm = causal_lm_of(model)
    saved = lm.generation_config
    lm.generation_config = GenerationConfig(repetition_penalty=3.0, top_k=5, no_repeat_ngram_size=2, min_p=0.3)
    try:
        rollout, scores = sample(
            model, tokenizer, PROMPTS, max_new_tokens=6, temperature=TEMPERATURE, seed=4, return_logits=True
        )
    finally:
        lm.generation_config = saved
    sampler = torch.log_softmax(scores, -1)  # (B, R, V): the distribution each token was drawn from
    mask = rollout.response_mask.bool()
    sampled = sampler.gather(-1, rollout.response_ids[..., None]).squeeze(-1)
    learner = _learner_logprobs(model, rollout, TEMPERATURE)
    torch.testing.assert_close(learner[mask], sampled[mask], atol=2e-4, rtol=2e-4)
    # The whole next-token distribution, not only the sampled token: no token was masked out.
    assert bool(torch.isfinite(sampler[mask]).all())


def test_every_dropout_is_off_including_functional_attention_dropout(tiny_lm, tmp_path):
    """A model whose config asks for attention dropout (applied functionally in train mode)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(tiny_lm)
    config.attention_dropout = 0.5
    model = AutoModelForCausalLM.from_pretrained(tiny_lm, config=config)
    model.save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(tiny_lm).save_pretrained(tmp_path)
    policy = perturbed_policy(str(tmp_path), quant="none")
    tokenizer = load_tokenizer(str(tmp_path))
    rollout = sample(policy, tokenizer, PROMPTS, max_new_tokens=4, seed=0)
    assert policy.training  # train-mode numerics (see ppo_numerics), yet deterministic
    a, b = _learner_logprobs(policy, rollout, 1.0), _learner_logprobs(policy, rollout, 1.0)
    assert torch.equal(a, b)


def test_reference_rows_give_the_reference_logprobs_and_the_same_samples(policy):
    """sample_with_reference: the teacher-forced adapter-off rows score each sampled token as the
    learner's reference pass (adapter disabled, full forward) does, and the adapter-on rows sample
    what `sample` samples for the same seed."""
    from rlhf_ray.models.generate import sample_with_reference
    from rlhf_ray.models.policy import reference_mode

    model, tokenizer = policy
    kw = dict(max_new_tokens=6, temperature=TEMPERATURE, group_size=2, seed=5)
    with_ref = sample_with_reference(model, tokenizer, PROMPTS, **kw)
    plain = sample(model, tokenizer, PROMPTS, **kw)
    assert torch.equal(with_ref.response_ids, plain.response_ids) and with_ref.responses == plain.responses
    assert torch.equal(with_ref.response_mask, plain.response_mask)
    with reference_mode(model):
        expected = _learner_logprobs(model, with_ref, TEMPERATURE)
    torch.testing.assert_close(with_ref.ref_logprobs, expected, atol=2e-4, rtol=2e-4)
    # the adapter matters: the policy's own log-probs of these tokens differ from the reference's
    assert (expected - _learner_logprobs(model, with_ref, TEMPERATURE)).abs().max() > 1e-2
    assert bool((with_ref.ref_logprobs[with_ref.response_mask == 0] == 0).all())
    # the rows survive select / concat (the learner's minibatching and generator shards)
    both = type(with_ref).concat(
        [with_ref.select(torch.tensor([1, 0])), with_ref.select(torch.tensor([2]))], tokenizer.pad_token_id
    )
    torch.testing.assert_close(both.ref_logprobs, with_ref.ref_logprobs[[1, 0, 2]])
