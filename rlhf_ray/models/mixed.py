"""Mixed-adapter sampling: one lean decode call draws the prompts of several named LoRA adapters of
one base (a sweep's runs), each row under its own adapter, and the reference (the base: no adapter)
for every row in the same steps.

The batch is [every request's rows | the same rows again under no adapter], as in
models.decode.decode_with_reference, where rows [0, B) all shared one adapter. Here each request
keeps what a call of its own would have: its temperature (per row), its response length, and its
own random stream (a torch.Generator seeded with its seed: the uniforms a request's rows draw are
the ones `sample_lean` draws for it alone). What differs is only float rounding where rows of other
requests share a matmul (tested: the same tokens as each adapter alone, log-probs within 1e-5).

peft's own `adapter_names=` mixed batches refuse training mode, and bitsandbytes int8 computes
differently in eval mode (models/policy.ppo_numerics), so the mixing is the lean loop's: each
projection adds each adapter's LoRA delta to that adapter's rows only (models.decode.RowAdapters)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from rlhf_ray.batch import Rollout
from rlhf_ray.models.decode import LeanDecoder, RowAdapters, _prefill, inverse_cdf_draw
from rlhf_ray.models.forward import position_ids
from rlhf_ray.models.generate import cache_kept, encode_prompts, make_rollout


@dataclass
class MixedRequest:
    """One adapter's share of a mixed call: what `sample_lean` would be called with for it alone."""

    adapter: str
    prompts: list[str]
    max_new_tokens: int
    temperature: float = 1.0
    group_size: int = 1
    seed: int = 0
    policy_version: int = 0


def sample_mixed(decoder: LeanDecoder, tokenizer, requests: list[MixedRequest]) -> list[Rollout]:
    """One decode call for every request -> one Rollout per request, as `sample_lean` makes it alone."""
    encoded = [encode_prompts(tokenizer, r.prompts, r.group_size, "cpu") for r in requests]
    width = max(enc["input_ids"].shape[1] for _, enc in encoded)
    pad = tokenizer.pad_token_id

    def left_pad(t: torch.Tensor, value: int) -> torch.Tensor:
        return torch.cat([torch.full((t.shape[0], width - t.shape[1]), value, dtype=t.dtype), t], dim=1)

    ids = torch.cat([left_pad(enc["input_ids"], pad) for _, enc in encoded])
    mask = torch.cat([left_pad(enc["attention_mask"], 0) for _, enc in encoded])
    sizes = [enc["input_ids"].shape[0] for _, enc in encoded]
    row_adapters = torch.cat([torch.full((n,), k, dtype=ids.dtype) for k, n in enumerate(sizes)])
    per_row = [(n, r) for n, r in zip(sizes, requests)]
    temperatures = torch.cat([torch.full((n,), float(r.temperature)) for n, r in per_row])
    max_new = torch.cat([torch.full((n,), r.max_new_tokens, dtype=torch.long) for n, r in per_row])
    generators = [torch.Generator().manual_seed(r.seed) for r in requests]
    tokens, ref, widths = decode_mixed(
        decoder, ids, mask, row_adapters, [r.adapter for r in requests], generators, temperatures, max_new,
        eos=tokenizer.eos_token_id, pad=pad,
    )  # fmt: skip
    return _rollouts(tokenizer, encoded, requests, sizes, widths, tokens, ref)


@torch.no_grad()
def decode_mixed(
    decoder: LeanDecoder,
    ids: torch.Tensor,
    mask: torch.Tensor,
    row_adapters: torch.Tensor,
    adapters: list[str],
    generators: list[torch.Generator],
    temperatures: torch.Tensor,
    max_new: torch.Tensor,
    *,
    eos: int,
    pad: int,
) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Left-padded prompts (B, P), each row's adapter index (B,) into `adapters` (its random stream
    `generators[k]`), temperature (B,) and token budget (B,) -> sampled tokens (B, R), the reference's
    log-probs of them (B, R), and each adapter's own response width (the step at which its rows had
    all ended: what a call of its own returns)."""
    b, p = ids.shape
    n, steps = 2 * b, int(max_new.max())
    decoder.prepare(n, adapters)
    kv = (n, decoder.kv_heads, p + steps, decoder.head_dim)
    cache = [(torch.empty(kv), torch.empty(kv)) for _ in decoder.layers]
    keys = torch.cat([mask, mask]).bool()
    positions = position_ids(torch.cat([mask, mask]))
    rows = RowAdapters(torch.cat([row_adapters, torch.full_like(row_adapters, -1)]))
    groups = [(k, (row_adapters == k).nonzero().flatten()) for k in range(len(adapters))]
    temps = torch.cat([temperatures, temperatures])[:, None]
    hidden, start = _prefill(decoder, ids, mask, cache, row_adapters), p
    steps_taken = Steps(b, groups, pad, eos, max_new, torch.device("cpu"))
    widths = steps_taken.widths
    for step in range(steps):
        logp = torch.log_softmax(decoder.logits(hidden).float() / temps, dim=-1)  # (2B, V)
        uniforms = torch.zeros(b)
        for k, idx in groups:
            if not widths[k]:  # a finished adapter draws no more: its stream is its own call's
                uniforms[idx] = torch.rand(len(idx), generator=generators[k])
        token = steps_taken.record(inverse_cdf_draw(logp[:b].exp(), uniforms), logp, step)
        if steps_taken.finished():
            break
        keys = torch.cat([keys, torch.ones(n, 1, dtype=torch.bool)], dim=1)
        positions = positions[:, -1:] + 1
        hidden = decoder.step(torch.cat([token, token])[:, None], positions, keys[:, None, None, :], cache, start, rows)
        start += 1
    return torch.stack(steps_taken.tokens, dim=1), torch.stack(steps_taken.ref_lps, dim=1), widths


@contextlib.contextmanager
def adapters_by_row(model, names: list[str], gates: dict[str, torch.Tensor]):
    """Inside: every named adapter active at once, each adding its LoRA output only to the rows where
    its gate (N,) is 1 (models.generate.adapter_rows, per adapter); a row whose gates are all 0 (the
    reference) computes the frozen base exactly. The active adapter is restored after."""
    from peft.tuners.lora import LoraLayer

    before = list(model.active_adapters)
    model.base_model.set_adapter(names)

    def gated(name: str):
        gate = gates[name]

        def hook(_module, _inputs, output):
            return output * gate.view((-1,) + (1,) * (output.dim() - 1)).to(output.dtype)

        return hook

    handles = [
        layer.lora_B[name].register_forward_hook(gated(name))
        for layer in model.modules()
        if isinstance(layer, LoraLayer)
        for name in names
        if name in layer.lora_B
    ]
    try:
        yield
    finally:
        for h in handles:
            h.remove()
        model.base_model.set_adapter(before if len(before) > 1 else before[0])


@torch.no_grad()
def sample_mixed_transformers(model, tokenizer, requests: list[MixedRequest], device: str = "cpu") -> list[Rollout]:
    """`sample_mixed` through transformers' forward (models.generate.sample_with_reference's loop): for a
    policy the lean loop does not apply to (a GPU, 4-bit weights, another architecture). Each request's
    rows sample from its own torch.Generator with torch.multinomial, as `sample_with_reference` draws
    for it alone after seeding."""
    encoded = [encode_prompts(tokenizer, r.prompts, r.group_size, device) for r in requests]
    width = max(enc["input_ids"].shape[1] for _, enc in encoded)
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id

    def left_pad(t: torch.Tensor, value: int) -> torch.Tensor:
        fill = torch.full((t.shape[0], width - t.shape[1]), value, dtype=t.dtype, device=t.device)
        return torch.cat([fill, t], dim=1)

    ids = torch.cat([left_pad(enc["input_ids"], pad) for _, enc in encoded])
    mask = torch.cat([left_pad(enc["attention_mask"], 0) for _, enc in encoded])
    sizes = [enc["input_ids"].shape[0] for _, enc in encoded]
    b = ids.shape[0]
    rows = torch.cat([torch.full((n,), k, dtype=torch.long) for k, n in enumerate(sizes)]).to(device)
    groups = [(k, (rows == k).nonzero().flatten()) for k in range(len(requests))]
    temps = torch.cat([torch.full((n,), float(r.temperature)) for n, r in zip(sizes, requests)]).to(device)
    temps = torch.cat([temps, temps])[:, None]
    max_new = torch.cat([torch.full((n,), r.max_new_tokens, dtype=torch.long) for n, r in zip(sizes, requests)])
    max_new = max_new.to(device)
    generators = [torch.Generator(device=device).manual_seed(r.seed) for r in requests]
    off = torch.zeros(b, device=device)
    gates = {r.adapter: torch.cat([(rows == k).float(), off]) for k, r in enumerate(requests)}
    mask2 = torch.cat([mask, mask])
    positions = position_ids(mask2)
    step_input, past = torch.cat([ids, ids]), None
    steps_taken = Steps(b, groups, pad, eos, max_new, device)
    widths = steps_taken.widths
    with adapters_by_row(model, [r.adapter for r in requests], gates), cache_kept(model):
        for step in range(int(max_new.max())):
            out = model(
                input_ids=step_input, attention_mask=mask2, position_ids=positions, cache=past, use_cache=True,
                logits_to_keep=1,
            )  # fmt: skip
            past = out.cache
            logp = torch.log_softmax(out.logits[:, -1].float() / temps, dim=-1)  # (2B, V)
            token = torch.full((b,), pad, dtype=torch.long, device=device)
            for k, idx in groups:
                if not widths[k]:  # a finished request draws no more: its stream is its own call's
                    token[idx] = torch.multinomial(logp[idx].exp(), 1, generator=generators[k]).squeeze(1)
            token = steps_taken.record(token, logp, step)
            if steps_taken.finished():
                break
            step_input = torch.cat([token, token])[:, None]
            mask2 = torch.cat([mask2, torch.ones_like(mask2[:, :1])], dim=1)
            positions = positions[:, -1:] + 1
    responses, ref = torch.stack(steps_taken.tokens, dim=1), torch.stack(steps_taken.ref_lps, dim=1)
    return _rollouts(tokenizer, encoded, requests, sizes, widths, responses, ref)


class Steps:
    """What both decode paths keep per step: the drawn tokens (pad once a row has ended), the reference's
    log-probs of them (rows B.. of the (2B, V) log-probs), which rows have ended (EOS or their own
    budget) and the step at which each group's rows had all ended (its width alone)."""

    def __init__(self, b: int, groups, pad: int, eos: int, max_new: torch.Tensor, device):
        self.b, self.groups, self.pad, self.eos, self.max_new = b, groups, pad, eos, max_new
        self.done = torch.zeros(b, dtype=torch.bool, device=device)
        self.widths = [0] * len(groups)
        self.tokens: list[torch.Tensor] = []
        self.ref_lps: list[torch.Tensor] = []

    def record(self, token: torch.Tensor, logp: torch.Tensor, step: int) -> torch.Tensor:
        token = torch.where(self.done, torch.full_like(token, self.pad), token)
        self.tokens.append(token)
        self.ref_lps.append(logp[self.b :].gather(1, token[:, None]).squeeze(1))
        self.done |= (token == self.eos) | (self.max_new <= step + 1)
        for k, idx in self.groups:
            if not self.widths[k] and bool(self.done[idx].all()):
                self.widths[k] = step + 1
        return token

    def finished(self) -> bool:
        return bool(self.done.all())


def _rollouts(tokenizer, encoded, requests, sizes, widths, tokens, ref) -> list[Rollout]:
    """Each request's rows as the Rollout its own call makes: its prompts' own padding, its width."""
    out, row = [], 0
    for (expanded, enc), r, n, w in zip(encoded, requests, sizes, widths):
        part = slice(row, row + n)
        response, ref_part = tokens[part, :w], ref[part, :w]
        out.append(
            make_rollout(tokenizer, expanded, enc, response, r.policy_version, r.group_size, r.temperature, ref_part)
        )
        row += n
    return out
