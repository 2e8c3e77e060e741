"""Training memory of the chunked LM head and of the decoder body (gradient checkpointing)."""

from __future__ import annotations

import pytest
import torch
from memtrack import LiveBytes

from rlhf_ray.models import forward
from rlhf_ray.models.forward import response_stats
from rlhf_ray.models.policy import ValueHead, attach_lora, load_causal_lm, ppo_numerics

VOCAB = 512  # the tiny models' tokenizer


def _policy(path, quant, gradient_checkpointing=False):
    torch.manual_seed(0)
    model = attach_lora(
        load_causal_lm(path, quant, "cpu"),
        r=4,
        alpha=8,
        dropout=0.0,
        targets=None,
        gradient_checkpointing=gradient_checkpointing,
    )
    with torch.no_grad():  # non-zero LoRA B so every LoRA parameter gets a gradient
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)) * 0.1)
    return ppo_numerics(model)


@pytest.fixture(scope="module")
def fp32_policy(tiny_lm):
    """Shared by the memory tests: they run backward but never change the weights."""
    return _policy(tiny_lm, "none")


def _batch(length: int, batch: int = 2, prompt: int = 3):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, VOCAB, (batch, prompt + length), generator=g)
    return ids, torch.ones_like(ids), prompt


def _reference_stats(model, ids, mask, prompt_len, with_entropy):
    """The pre-change computation: full-length logits kept for backward (the thing we replace)."""
    hidden = forward.decoder_hidden(model, ids, mask)[:, prompt_len - 1 : -1]
    logits = forward.causal_lm_of(model).get_output_embeddings()(hidden).float()
    lp = torch.log_softmax(logits, -1).gather(-1, ids[:, prompt_len:, None]).squeeze(-1)
    p = torch.softmax(logits, -1)
    return lp, -(p * p.log()).sum(-1) * mask[:, prompt_len:] if with_entropy else None


def _grads(model, loss_fn):
    model.zero_grad(set_to_none=True)
    loss_fn().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("quant", ["none", "8bit"])
def test_checkpointed_head_gives_the_same_gradients(tiny_lm, quant):
    model = _policy(tiny_lm, quant)
    ids, mask, p = _batch(10)
    head = ValueHead(model.config.hidden_size)

    def chunked():
        out = response_stats(model, ids, mask, p, chunk=3, with_entropy=True, value_head=head)
        return (out.logprobs * torch.linspace(-1, 1, 10)).sum() - 0.3 * out.entropy.sum()

    def full():
        lp, ent = _reference_stats(model, ids, mask, p, with_entropy=True)
        return (lp * torch.linspace(-1, 1, 10)).sum() - 0.3 * ent.sum()

    got, want = _grads(model, chunked), _grads(model, full)
    assert got.keys() == want.keys() and len(got) > 0
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-6)


def _saved_vocab_bytes(model, length: int, entropy_grad: bool = True) -> int:
    """Bytes of vocabulary-sized activations the autograd graph keeps until backward."""
    ids, mask, p = _batch(length)
    total = 0

    def pack(t):
        nonlocal total
        if t.dim() >= 2 and t.shape[-1] == VOCAB and t.shape[0] != VOCAB:  # activations, not the (V, H) head weight
            total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = response_stats(model, ids, mask, p, chunk=4, with_entropy=True, entropy_grad=entropy_grad)
    (out.logprobs.sum() + out.entropy.sum()).backward()  # the entropy carries no graph when entropy_grad=False
    return total


def test_head_keeps_no_vocab_sized_activation_for_backward(fp32_policy):
    model = fp32_policy
    # Before: every chunk's fp32 logits and log-softmax stayed saved, 2 chunks -> 8 chunks grew 4x.
    assert _saved_vocab_bytes(model, 8) == 0
    assert _saved_vocab_bytes(model, 32) == 0


def LiveVocabBytes(model) -> LiveBytes:
    """Live bytes of vocabulary-sized storages made by any op (forward and backward), and their peak."""
    weights = {q.untyped_storage().data_ptr() for q in model.parameters()}  # (V, H) head/embedding views
    return LiveBytes(lambda t: t.dim() >= 2 and t.shape[-1] == VOCAB and t.shape[0] != VOCAB, weights)


def test_head_peak_in_backward_does_not_grow_with_chunks(fp32_policy):
    """Peak of live vocabulary-sized tensors over forward + backward is a few chunks' worth, whatever R is."""
    model = fp32_policy
    peaks = []
    for length in (8, 32):
        ids, mask, p = _batch(length)
        with LiveVocabBytes(model) as mode:
            out = response_stats(model, ids, mask, p, chunk=4, with_entropy=True, entropy_grad=False)
            out.logprobs.sum().backward()
        peaks.append(mode.peak)
    one_chunk = 2 * 4 * VOCAB * 4  # (B, chunk, V) fp32
    # Before the change the peak grew with R (about 7 -> 13 chunk buffers for R = 8 -> 32); now ~5, whatever R.
    assert peaks[0] == peaks[1] <= 6 * one_chunk, (peaks, one_chunk)  # logits, log-softmax, their grads


def test_single_chunk_head_runs_once_and_stays_bounded(fp32_policy):
    """A response within one chunk is not recomputed in backward (one LM-head pass, not two); its
    peak is still a few chunk buffers."""
    model = fp32_policy
    head = forward.causal_lm_of(model).get_output_embeddings()
    calls = []
    hook = head.register_forward_hook(lambda *_: calls.append(1))
    try:
        for length, want in ((4, 1), (8, 4)):  # 1 chunk: one pass; 2 chunks: two passes, each recomputed
            calls.clear()
            ids, mask, p = _batch(length)
            with LiveVocabBytes(model) as mode:
                out = response_stats(model, ids, mask, p, chunk=4, with_entropy=True, entropy_grad=False)
                out.logprobs.sum().backward()
            assert len(calls) == want, (length, len(calls))
            # without the recompute one more buffer (the saved log-softmax) lives into backward
            assert mode.peak <= 7 * 2 * 4 * VOCAB * 4, (length, mode.peak)
    finally:
        hook.remove()


def test_entropy_without_coefficient_carries_no_graph(fp32_policy):
    model = fp32_policy
    ids, mask, p = _batch(6)
    with_grad = response_stats(model, ids, mask, p, chunk=4, with_entropy=True, entropy_grad=True)
    metric_only = response_stats(model, ids, mask, p, chunk=4, with_entropy=True, entropy_grad=False)
    assert with_grad.entropy.requires_grad and not metric_only.entropy.requires_grad
    torch.testing.assert_close(with_grad.entropy.detach(), metric_only.entropy)


@pytest.mark.parametrize("quant", ["none", "8bit"])
def test_body_gradient_checkpointing_gives_the_same_gradients(tiny_lm, quant):
    ids, mask, p = _batch(8)

    def loss(model):
        return lambda: response_stats(model, ids, mask, p, chunk=4).logprobs.sum()

    plain = _grads(m := _policy(tiny_lm, quant), loss(m))
    ckpt_model = _policy(tiny_lm, quant, gradient_checkpointing=True)
    assert causal_lm_is_checkpointing(ckpt_model)
    checkpointed = _grads(ckpt_model, loss(ckpt_model))
    assert plain.keys() == checkpointed.keys()
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-4, atol=1e-6)


def causal_lm_is_checkpointing(model) -> bool:
    return bool(forward.causal_lm_of(model).is_gradient_checkpointing)
