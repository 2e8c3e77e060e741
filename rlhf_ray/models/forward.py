"""Per-token log-probs, entropy and values of response tokens, computed in chunks.

The decoder body runs once over the whole (B, P + R) sequence; the (vocab-sized) LM head and
log-softmax run over `chunk` response positions at a time, so peak memory is (B, chunk, V)
instead of (B, R, V), in training too (with several chunks, each is recomputed in backward)."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch.utils.checkpoint import checkpoint

from rlhf_ray.algo import entropy_from_logprobs
from rlhf_ray.models.policy import causal_lm_of


@dataclass
class ResponseStats:
    logprobs: torch.Tensor  # (B, R) log p(response token | prefix); 0 at padding
    entropy: torch.Tensor | None  # (B, R) entropy of the next-token distribution; 0 at padding
    values: torch.Tensor | None  # (B, R) value head output; 0 at padding


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Left padding shifts token positions; count real tokens so position 0 is the first real one."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


# Decoder bodies whose forward runs `inputs_embeds` through `layers` as given, then `norm`: a slice of their
# layers can be run on the hidden states entering its first one (Gemma, for one, scales inputs_embeds).
TRUNK_MODELS = frozenset({"llama", "mistral", "qwen2", "qwen3"})


def _body(model):
    lm = causal_lm_of(model)
    return getattr(lm, lm.base_model_prefix)


def trunk_depth(model, adapter_name: str = "default") -> int:
    """How many bottom decoder layers carry no LoRA of `adapter_name` (model.lora_layers): their output is
    the same for the policy, its past versions and the reference, so a batch's pass through them can be
    computed once and reused (trunk_hidden). 0 where there is no such trunk, or the body cannot be entered
    above its first layer."""
    body = _body(model)
    if causal_lm_of(model).config.model_type not in TRUNK_MODELS or not hasattr(body, "norm"):
        return 0
    for index, layer in enumerate(body.layers):
        if any(adapter_name in getattr(m, "lora_A", {}) for m in layer.modules()):
            return index
    return 0  # no adapter in any layer: nothing to train, nothing to split


@contextmanager
def _only_layers(body, layers: slice, norm: bool):
    """The body runs `layers` only (and its final norm only if `norm`), until the block ends."""
    all_layers, final_norm = body.layers, body.norm
    body.layers = all_layers[layers]
    if not norm:
        body.norm = torch.nn.Identity()
    try:
        yield
    finally:
        body.layers, body.norm = all_layers, final_norm


def _run_body(body, attention_mask: torch.Tensor, **inputs) -> torch.Tensor:
    out = body(attention_mask=attention_mask, position_ids=position_ids(attention_mask), use_cache=False, **inputs)
    return out[0] if isinstance(out, tuple) else out.last_hidden_state


def trunk_hidden(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, depth: int) -> torch.Tensor:
    """The hidden states (B, T, H) entering layer `depth` (trunk_depth): the frozen layers below it, no grad."""
    body = _body(model)
    with torch.no_grad(), _only_layers(body, slice(0, depth), norm=False):
        return _run_body(body, attention_mask, input_ids=input_ids)


def decoder_hidden(
    model, input_ids: torch.Tensor, attention_mask: torch.Tensor, trunk: tuple[int, torch.Tensor] | None = None
) -> torch.Tensor:
    """Final hidden states (B, T, H) of the decoder body (LoRA applies; adapter state as set). With `trunk`
    = (depth, trunk_hidden's states for these rows), only the layers from `depth` up run."""
    body = _body(model)
    if trunk is None:
        return _run_body(body, attention_mask, input_ids=input_ids)
    depth, states = trunk
    with _only_layers(body, slice(depth, None), norm=True):
        return _run_body(body, attention_mask, inputs_embeds=states)


def _chunk_stats(
    head,
    h: torch.Tensor,
    targets: torch.Tensor,
    mask: torch.Tensor,
    with_entropy: bool,
    entropy_grad: bool,
    temperature: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Shapes: h (B, C, H), targets/mask (B, C) -> log-probs (B, C), entropy (B, C) or None.

    The only place the (B, C, V) logits exist. `h` is a slice of the (B, T, H) hidden states: made
    contiguous first, else the head's matmul runs as a broadcast bmm, 2.5x slower on a CPU."""
    h = h.contiguous()
    logits = head(h.to(head.weight.dtype if head.weight.is_floating_point() else h.dtype)).float().div_(temperature)
    logp = torch.log_softmax(logits, dim=-1)
    lp = logp.gather(-1, targets[..., None]).squeeze(-1)
    if not with_entropy:
        return lp, None
    with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
        return lp, entropy_from_logprobs(logp, mask)


def _head_stats(
    head, states, targets, mask, chunk: int, with_entropy: bool, entropy_grad: bool, temperature: float = 1.0
):
    """Chunked LM head. With gradients, each chunk is recomputed in backward (activation
    checkpointing), so the graph keeps only the (B, C, H) inputs, never a chunk's (B, C, V)
    log-softmax: the peak stays one chunk's logits however long the response is. A response that
    fits in one chunk is not recomputed: its peak is one chunk either way, and the recompute would
    cost a whole extra LM-head pass (a quarter of the learner's LM-head time on the bench workload)."""
    checkpointed = torch.is_grad_enabled() and states.requires_grad and targets.shape[1] > chunk
    logprobs, entropies = [], []
    for start in range(0, targets.shape[1], chunk):
        args = (
            head,
            states[:, start : start + chunk],
            targets[:, start : start + chunk],
            mask[:, start : start + chunk],
            with_entropy,
            entropy_grad,
            temperature,
        )
        if checkpointed:
            lp, ent = checkpoint(_chunk_stats, *args, use_reentrant=False)
        else:
            lp, ent = _chunk_stats(*args)
        logprobs.append(lp)
        entropies.append(ent)
    return torch.cat(logprobs, dim=1), torch.cat(entropies, dim=1) if with_entropy else None


def response_stats(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    prompt_len: int,
    chunk: int = 64,
    value_head=None,
    with_entropy: bool = False,
    temperature: float = 1.0,
    entropy_grad: bool = True,
    trunk: tuple[int, torch.Tensor] | None = None,
) -> ResponseStats:
    """Shapes: input_ids, attention_mask (B, P + R) with P = prompt_len -> ResponseStats of (B, R).

    Log-probs and entropy are those of softmax(logits / temperature): the distribution the
    generator sampled from (models.generate), so ratios and KL describe the sampling policy.

    Logits at position t predict token t + 1, so response token j (at P + j) is scored by the
    hidden state at P + j - 1; the value of that state is the value before emitting token j.
    entropy_grad=False computes the entropy as a metric only (no graph) when its loss weight is 0.
    trunk: (depth, the hidden states entering layer depth), to run only the layers above (decoder_hidden)."""
    lm = causal_lm_of(model)
    head = lm.get_output_embeddings()
    hidden = decoder_hidden(model, input_ids, attention_mask, trunk)
    targets = input_ids[:, prompt_len:]  # (B, R)
    mask = attention_mask[:, prompt_len:]
    states = hidden[:, prompt_len - 1 : -1]  # (B, R, H)
    logprobs, entropy = _head_stats(head, states, targets, mask, chunk, with_entropy, entropy_grad, temperature)
    maskf = mask.float()
    values = value_head(states) * maskf if value_head is not None else None
    return ResponseStats(logprobs=logprobs * maskf, entropy=entropy, values=values)
