"""Sampling responses: left-padded prompts in, right-padded responses with an EOS-aware mask out."""

from __future__ import annotations

import torch

from rlhf_ray.batch import Rollout


def response_mask_from(response_ids: torch.Tensor, eos_id: int) -> torch.Tensor:
    """Shapes: (B, R) -> (B, R). 1 up to and including the first EOS (pad may equal EOS)."""
    is_eos = (response_ids == eos_id).long()
    eos_before = is_eos.cumsum(dim=1) - is_eos  # EOS tokens strictly before each position
    return (eos_before == 0).long()


@torch.no_grad()
def sample(model, tokenizer, prompts: list[str], *, max_new_tokens: int, temperature: float = 1.0,
           top_k: int = 0, top_p: float = 1.0, group_size: int = 1, seed: int = 0,
           policy_version: int = 0, device: str = "cpu") -> Rollout:
    """Draw `group_size` samples per prompt (rows of one prompt are contiguous)."""
    tokenizer.padding_side = "left"
    expanded = [p for p in prompts for _ in range(group_size)]
    enc = tokenizer(expanded, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
    torch.manual_seed(seed)  # reproducible sampling for a given (run seed, iteration, shard)
    out = model.generate(
        **enc,
        do_sample=True,
        temperature=temperature,
        top_k=top_k if top_k > 0 else None,
        top_p=top_p,
        max_new_tokens=max_new_tokens,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    prompt_len = enc["input_ids"].shape[1]
    response_ids = out[:, prompt_len:].cpu()
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
    )
