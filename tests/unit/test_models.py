"""Model layer on real bitsandbytes quantization (CPU) and real peft adapters."""

from __future__ import annotations

import dataclasses
import hashlib

import pytest
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from rlhf_ray.batch import AdapterPayload
from rlhf_ray.models.adapter import AdapterIntegrityError, export_adapter, import_adapter, save_adapter
from rlhf_ray.models.forward import response_stats
from rlhf_ray.models.generate import response_mask_from, sample
from rlhf_ray.models.policy import (
    ValueHead,
    attach_lora,
    load_causal_lm,
    load_tokenizer,
    memory_footprint_bytes,
    reference_mode,
)


def _policy(path, quant="8bit", seed=0):
    torch.manual_seed(seed)
    return attach_lora(load_causal_lm(path, quant, "cpu"), r=4, alpha=8, dropout=0.0, targets=None)


def _perturb(model, seed=1):
    """Give the adapter non-zero weights (a fresh LoRA has B = 0 and equals the base)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)


@pytest.fixture(scope="module")
def batch(tiny_lm):
    tokenizer = load_tokenizer(tiny_lm)
    model = _policy(tiny_lm)
    return sample(model, tokenizer, ["This movie was", "Honestly the plot"], max_new_tokens=6, seed=0)


def _lp(model, rollout, chunk=64):
    return response_stats(
        model, rollout.input_ids, rollout.attention_mask, rollout.prompt_ids.shape[1], chunk=chunk
    ).logprobs


def test_response_mask_stops_after_first_eos():
    ids = torch.tensor([[5, 7, 1, 1], [1, 1, 1, 1], [4, 4, 4, 4]])
    assert response_mask_from(ids, eos_id=1).tolist() == [[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]]


def test_reference_equals_fresh_base_without_adapter(tiny_lm, batch):
    policy = _policy(tiny_lm)
    _perturb(policy)
    with torch.no_grad(), reference_mode(policy):
        ref = _lp(policy, batch)
    base = load_causal_lm(tiny_lm, "8bit", "cpu")
    with torch.no_grad():
        fresh = _lp(base, batch)
        with_adapter = _lp(policy, batch)
    torch.testing.assert_close(ref, fresh, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(with_adapter, fresh, atol=1e-3)  # the adapter does change the policy


def test_training_step_moves_adapter_not_reference(tiny_lm, batch):
    policy = _policy(tiny_lm)
    with torch.no_grad(), reference_mode(policy):
        ref_before = _lp(policy, batch)
    lora_before = {n: p.detach().clone() for n, p in policy.named_parameters() if p.requires_grad}
    opt = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=1e-2)
    loss = -_lp(policy, batch).sum()
    loss.backward()
    opt.step()
    changed = [n for n, p in policy.named_parameters() if p.requires_grad and not torch.equal(p, lora_before[n])]
    assert changed and all("lora" in n for n in changed)
    with torch.no_grad(), reference_mode(policy):
        torch.testing.assert_close(_lp(policy, batch), ref_before)


def test_adapter_transfer_is_bit_identical_and_tamper_proof(tiny_lm, batch):
    src, dst = _policy(tiny_lm, seed=0), _policy(tiny_lm, seed=1)
    _perturb(src)
    head_src, head_dst = ValueHead(src.config.hidden_size), ValueHead(dst.config.hidden_size)
    payload = export_adapter(src, version=3, value_head=head_src)
    assert payload.nbytes < 200_000  # LoRA + value head only, never the base
    assert import_adapter(dst, payload, head_dst) == payload.sha256
    with torch.no_grad():
        a = response_stats(src, batch.input_ids, batch.attention_mask, batch.prompt_ids.shape[1], value_head=head_src)
        b = response_stats(dst, batch.input_ids, batch.attention_mask, batch.prompt_ids.shape[1], value_head=head_dst)
    assert torch.equal(a.logprobs, b.logprobs) and torch.equal(a.values, b.values)
    tampered = bytearray(payload.data)
    tampered[-1] ^= 0xFF
    with pytest.raises(AdapterIntegrityError, match="hash check"):
        import_adapter(dst, dataclasses.replace(payload, data=bytes(tampered)))
    state = st_load(payload.data)
    state.pop(next(k for k in state if "lora_A" in k))  # an adapter of another shape/model
    data = st_save(state)
    with pytest.raises(AdapterIntegrityError, match="does not fit"):
        import_adapter(dst, AdapterPayload(4, hashlib.sha256(data).hexdigest(), data))


def test_padding_and_chunking_invariance(tiny_lm, batch):
    policy = _policy(tiny_lm)
    _perturb(policy)
    with torch.no_grad():
        together = _lp(policy, batch)
        for row in range(len(batch)):
            one = batch.select(torch.tensor([row]))
            keep = one.prompt_mask[0].bool()  # drop the left padding the batch added
            alone = dataclasses.replace(one, prompt_ids=one.prompt_ids[:, keep], prompt_mask=one.prompt_mask[:, keep])
            torch.testing.assert_close(_lp(policy, alone)[0], together[row], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(_lp(policy, batch, chunk=1), together)


def test_saved_adapter_loads_with_plain_peft_and_neox_defaults(tiny_lm, cache_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from rlhf_ray.models.assets import resolve_model

    policy = _policy(tiny_lm)
    _perturb(policy)
    save_adapter(policy, tmp_path / "adapter", value_head=ValueHead(policy.config.hidden_size))
    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_lm), str(tmp_path / "adapter"))
    assert any("lora_B" in n and p.abs().sum() > 0 for n, p in loaded.named_parameters())
    assert (tmp_path / "adapter" / "value_head.safetensors").exists()
    neox = attach_lora(load_causal_lm(resolve_model("tiny-random-neox", cache_dir), "8bit", "cpu"), 4, 8, 0.0, None)
    assert any("query_key_value.lora_A" in n for n, _ in neox.named_parameters())


@pytest.mark.slow  # 3-5 s on 2 cores: in `make test`, not in test-fast
def test_quantized_footprints_on_smollm2(smollm2):
    sizes = {q: memory_footprint_bytes(load_causal_lm(smollm2, q, "cpu")) for q in ("none", "8bit", "4bit")}
    assert sizes["4bit"] < sizes["8bit"] < sizes["none"]
    print("SmolLM2-135M footprint MB:", {q: round(b / 2**20) for q, b in sizes.items()})


def test_reward_model_scores_and_rejects_nan(tiny_classifier):
    from rlhf_ray.errors import UserError
    from rlhf_ray.rewards.classifier import RewardModel

    rm = RewardModel(tiny_classifier, score="prob", batch_size=2)
    scores = rm.score(["great film", "awful film", "fine"])
    assert scores.shape == (3,) and bool(((scores >= 0) & (scores <= 1)).all())
    log_prob = RewardModel(tiny_classifier, score="log_prob").score(["great film", "awful film", "fine"])
    torch.testing.assert_close(log_prob, scores.log())
    margin = RewardModel(tiny_classifier, score="logit_margin")
    logits = margin.model(**margin.tokenizer(["great film"], return_tensors="pt")).logits[0]
    torch.testing.assert_close(margin.score(["great film"])[0], logits[1] - logits[0])
    with torch.no_grad():
        margin.model.classifier.weight.fill_(float("nan"))  # a real broken classifier
    with pytest.raises(UserError, match="non-finite"):
        margin.score(["great film"])
