"""Sampling responses: left-padded prompts in, right-padded responses with an EOS-aware mask out.

The sampling distribution is softmax(logits / temperature) and nothing else: every generation
setting is passed explicitly and the model's own `generation_config.json` is set aside while
sampling, so a `repetition_penalty` or `top_k` shipped with a checkpoint cannot change the policy
that PPO's log-probs (models.forward.response_stats with the same temperature) describe."""

from __future__ import annotations

import contextlib

import torch

from rlhf_ray.batch import Rollout
from rlhf_ray.models.forward import position_ids
from rlhf_ray.models.policy import causal_lm_of


def response_mask_from(response_ids: torch.Tensor, eos_id: int) -> torch.Tensor:
    """Shapes: (B, R) -> (B, R). 1 up to and including the first EOS (pad may equal EOS)."""
    is_eos = (response_ids == eos_id).long()
    eos_before = is_eos.cumsum(dim=1) - is_eos  # EOS tokens strictly before each position
    return (eos_before == 0).long()


def sampling_config(tokenizer, *, max_new_tokens: int, temperature: float, top_k: int = 0, top_p: float = 1.0):
    """A GenerationConfig with every logits processor set to its neutral value except the ones asked for."""
    from transformers import GenerationConfig

    return GenerationConfig(
        do_sample=True,
        num_beams=1,
        num_return_sequences=1,
        max_new_tokens=max_new_tokens,
        min_new_tokens=0,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        min_p=None,
        top_h=None,
        typical_p=1.0,
        epsilon_cutoff=0.0,
        eta_cutoff=0.0,
        repetition_penalty=1.0,
        no_repeat_ngram_size=0,
        bad_words_ids=None,
        suppress_tokens=None,
        begin_suppress_tokens=None,
        forced_bos_token_id=None,
        forced_eos_token_id=None,
        renormalize_logits=False,
        remove_invalid_values=False,
        use_cache=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )


@contextlib.contextmanager
def model_defaults_ignored(model):
    """generate() fills every unset field from the model's own generation config (transformers 5.x):
    swap in an empty one so only what `sampling_config` says applies."""
    from transformers import GenerationConfig

    lm = causal_lm_of(model)
    saved = lm.generation_config
    lm.generation_config = GenerationConfig()
    try:
        yield
    finally:
        lm.generation_config = saved


@contextlib.contextmanager
def cache_kept(model):
    """Inside: decoding keeps its KV cache although the policy is in train mode (ppo_numerics) with
    gradient checkpointing on. transformers 5.24 keeps the cache there when gradients are off, but
    older releases drop it whenever `gradient_checkpointing and training`: each decode step would
    then attend to the newest token only (garbage samples from real weights, and a "generate" memory
    peak without a cache). So checkpointing is switched off while sampling (it only matters in a
    backward pass), and the config asks for a cache; both are restored after."""
    lm = causal_lm_of(model)
    flagged = [m for m in lm.modules() if getattr(m, "gradient_checkpointing", False) is True]
    saved_use_cache = getattr(lm.config, "use_cache", None)
    for m in flagged:
        m.gradient_checkpointing = False
    lm.config.use_cache = True
    try:
        yield
    finally:
        for m in flagged:
            m.gradient_checkpointing = True
        lm.config.use_cache = saved_use_cache


def encode_prompts(tokenizer, prompts: list[str] | list[list[int]], group_size: int, device: str):
    """Left-padded prompt ids and mask, each prompt repeated `group_size` times, and the prompts as text.

    Prompts given as token ids (a multi-turn episode's context: its turns as sampled) are used as they
    are, never decoded and re-encoded; their text is decoded for display only."""
    tokenizer.padding_side = "left"
    if prompts and not isinstance(prompts[0], str):
        ids = [list(p) for p in prompts for _ in range(group_size)]
        width = max(len(row) for row in ids)
        pad = tokenizer.pad_token_id
        enc = {
            "input_ids": torch.tensor([[pad] * (width - len(r)) + r for r in ids], dtype=torch.long, device=device),
            "attention_mask": torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in ids], device=device),
        }
        return tokenizer.batch_decode(ids, skip_special_tokens=False), enc
    expanded = [p for p in prompts for _ in range(group_size)]
    return expanded, tokenizer(expanded, return_tensors="pt", padding=True, add_special_tokens=False).to(device)


def make_rollout(
    tokenizer,
    expanded,
    enc,
    response_ids: torch.Tensor,
    policy_version: int,
    group_size: int,
    temperature: float,
    ref_logprobs: torch.Tensor | None = None,
) -> Rollout:
    response_ids = response_ids.cpu()
    response_mask = response_mask_from(response_ids, tokenizer.eos_token_id)
    response_ids = torch.where(response_mask.bool(), response_ids, tokenizer.pad_token_id)
    return Rollout(
        prompt_ids=enc["input_ids"].cpu(),
        prompt_mask=enc["attention_mask"].cpu(),
        response_ids=response_ids,
        response_mask=response_mask,
        prompts=expanded,
        responses=tokenizer.batch_decode(response_ids, skip_special_tokens=True),
        policy_version=policy_version,
        group_size=group_size,
        temperature=temperature,
        ref_logprobs=None if ref_logprobs is None else (ref_logprobs.cpu() * response_mask),
    )


@torch.no_grad()
def sample(
    model,
    tokenizer,
    prompts: list[str],
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    group_size: int = 1,
    seed: int = 0,
    policy_version: int = 0,
    device: str = "cpu",
    return_logits: bool = False,
) -> Rollout | tuple[Rollout, torch.Tensor]:
    """Draw `group_size` samples per prompt (rows of one prompt are contiguous).

    With `return_logits`, also the processed next-token scores the sampler drew from, (B, R, V)
    log-space (for tests that compare them with the learner's log-probs)."""
    expanded, enc = encode_prompts(tokenizer, prompts, group_size, device)
    config = sampling_config(
        tokenizer, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p
    )
    config.return_dict_in_generate, config.output_scores = return_logits, return_logits
    torch.manual_seed(seed)  # reproducible sampling for a given (run seed, iteration, shard)
    with model_defaults_ignored(model), cache_kept(model):
        out = model.generate(**enc, generation_config=config)
    sequences = out.sequences if return_logits else out
    rollout = make_rollout(
        tokenizer, expanded, enc, sequences[:, enc["input_ids"].shape[1] :], policy_version, group_size, temperature
    )
    if return_logits:
        return rollout, torch.stack(out.scores, dim=1).float().cpu()
    return rollout


@contextlib.contextmanager
def adapter_rows(model, rows_on: torch.Tensor):
    """Inside: LoRA adds its output only to the batch rows where `rows_on` is True; the other rows
    compute the frozen base exactly (base + 0), i.e. the reference policy, in the same forward."""
    from peft.tuners.lora import LoraLayer

    gate = rows_on.float()

    def hook(_module, _inputs, output):
        return output * gate.view((-1,) + (1,) * (output.dim() - 1)).to(output.dtype)

    handles = [
        b.register_forward_hook(hook)
        for layer in model.modules()
        if isinstance(layer, LoraLayer)
        for b in layer.lora_B.values()
    ]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def sample_with_reference(
    model,
    tokenizer,
    prompts: list[str],
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    group_size: int = 1,
    seed: int = 0,
    policy_version: int = 0,
    device: str = "cpu",
) -> Rollout:
    """`sample`, plus the reference policy's log-probs of every sampled token, from the same decode steps.

    The batch is doubled: rows [0, B) sample with the adapter on; rows [B, 2B) run with the adapter
    off and are fed the tokens rows [0, B) sampled (teacher forcing), so their next-token
    distribution at each step is the reference's for the very token just drawn. Where a decode step
    costs about the same for B or 2B rows (memory- or overhead-bound: CPUs, small GPU batches), the
    learner's whole reference pass comes nearly free. Sampling is softmax(logits / temperature) with
    torch.multinomial, as `generate` does it; the log-probs are of that same distribution."""

    expanded, enc = encode_prompts(tokenizer, prompts, group_size, device)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    B = ids.shape[0]
    rows_on = torch.arange(2 * B, device=device) < B
    mask2 = torch.cat([mask, mask])
    positions = position_ids(mask2)
    step_input, past = torch.cat([ids, ids]), None
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    done = torch.zeros(B, dtype=torch.bool, device=device)
    tokens, ref_lps = [], []
    torch.manual_seed(seed)
    with adapter_rows(model, rows_on), cache_kept(model):
        for _ in range(max_new_tokens):
            out = model(
                input_ids=step_input,
                attention_mask=mask2,
                position_ids=positions,
                cache=past,
                use_cache=True,
                logits_to_keep=1,
            )
            past = out.cache
            logp = torch.log_softmax(out.logits[:, -1].float() / temperature, dim=-1)  # (2B, V)
            token = torch.multinomial(logp[:B].exp(), 1).squeeze(1)
            token = torch.where(done, torch.full_like(token, pad), token)  # finished rows only pad
            tokens.append(token)
            ref_lps.append(logp[B:].gather(1, token[:, None]).squeeze(1))
            done |= token == eos
            if bool(done.all()):
                break
            step_input = torch.cat([token, token])[:, None]
            mask2 = torch.cat([mask2, torch.ones_like(mask2[:, :1])], dim=1)
            positions = positions[:, -1:] + 1
    responses = torch.stack(tokens, dim=1)
    return make_rollout(
        tokenizer, expanded, enc, responses, policy_version, group_size, temperature, torch.stack(ref_lps, dim=1)
    )
