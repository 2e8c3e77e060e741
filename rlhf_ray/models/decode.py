"""A lean decode loop for Llama-architecture policies on a CPU: the policy's samples and the
reference's log-probs of them, from the same decode steps, with a fraction of the per-step work of a
transformers forward.

A decode step of a 135M model on a CPU is mostly small operations, not arithmetic: a transformers
forward per generated token runs ~1,500 of them (per layer: three projections and their LoRA pairs
for q, k and v, a cast, the adapter gate, a growing KV cache concatenated anew, ...). Here a layer
is one fused q|k|v matmul and one fused gate|up matmul over weights dequantized once for the run, the
LoRA pairs computed for the policy rows only, and a KV cache allocated once per call. The norms and the
rotary embedding are the model's own modules.

What it computes is the model's function up to float rounding: a fused matmul sums in another order
than three separate ones, so logits differ from the learner's forward by ~1e-6 (tested: log-probs of
the sampled tokens within 2e-4 of the learner's, the same bound the reference rows meet in
models.generate). Tokens are drawn by inverse CDF: one uniform per row from torch's seeded generator,
the first token whose cumulative probability (summed in float64) exceeds it. That is an exact draw
from softmax(logits / temperature) and costs a cumulative sum instead of `torch.multinomial`'s
exponential draw per vocabulary entry (10% of a step at 49k tokens); it is a different random stream
from `generate`'s, so for the same seed the tokens differ from `models.generate.sample`'s.

A LeanDecoder holds the frozen base laid out for this (one fp32 copy of the int8 weights and MKL's
packed copy, built once per generator: `held_bytes`); the adapter is read from the model at every
call.
`unsupported(model)` says why the loop does not apply to a model (another architecture, 4-bit or GPU
weights, a merged adapter): the generator then decodes through transformers
(models.generate.sample_with_reference)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from rlhf_ray.batch import Rollout
from rlhf_ray.models.dequant import dequantized_bytes, int8_layers, int8_state
from rlhf_ray.models.forward import position_ids
from rlhf_ray.models.generate import encode_prompts, make_rollout
from rlhf_ray.models.policy import causal_lm_of

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def inverse_cdf_draw(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Shapes: probs (B, V) (any non-negative weights), uniforms (B,) in [0, 1) -> tokens (B,).

    Token i is drawn when sum(p[:i]) <= u * sum(p) < sum(p[:i + 1]): an exact draw from p / sum(p).
    Entries of weight 0 span no interval and are never drawn. Summed in float64, so the rounding of
    a 49k-entry sum stays ~1e-12, far under any token's probability that matters."""
    cdf = probs.double().cumsum(dim=-1)
    target = uniforms.double() * cdf[:, -1]
    token = torch.searchsorted(cdf, target[:, None], right=True).squeeze(1)
    return token.clamp(max=probs.shape[-1] - 1)


def _split(module):
    """(base linear, (A, B, scaling) or None) of a projection, LoRA-wrapped or not."""
    if not hasattr(module, "lora_A"):
        return module, None
    names = [n for n in module.active_adapters if n in module.lora_A]
    if not names or module.disable_adapters:
        return module.base_layer, None
    n = names[0]
    return module.base_layer, (module.lora_A[n].weight, module.lora_B[n].weight, module.scaling[n])


def _named_lora(module, name: str):
    """(A, B, scaling) of adapter `name` on a projection, or None (not LoRA-wrapped, or not a target of it)."""
    if not hasattr(module, "lora_A") or name not in module.lora_A:
        return None
    return module.lora_A[name].weight, module.lora_B[name].weight, module.scaling[name]


class RowAdapters:
    """Which named adapter each row of a decode step runs under (models/mixed.py): an index into the
    adapters the decoder was prepared with, -1 for none (the reference's rows)."""

    def __init__(self, index: torch.Tensor):
        self.index = index
        self.groups = [(k, (index == k).nonzero().flatten()) for k in sorted(set(index.tolist())) if k >= 0]


def _adapters_supported(lm) -> bool:
    """One active adapter, not merged into the base (a merged one is in the int8 weights)."""
    layers = [m for m in lm.modules() if hasattr(m, "lora_A")]
    return all(not m.merged and len([n for n in m.active_adapters if n in m.lora_A]) <= 1 for m in layers)


def _packable() -> bool:
    return hasattr(torch.ops.mkl, "_mkl_reorder_linear_weight")


class Projections:
    """Projections of one layer that read the same input (q|k|v, gate|up, o, down) as one matmul.

    The fp32 weight is bitsandbytes' train-mode dequantization `CB * (SCB / 127)` of each part (the
    expression of models.dequant), stacked by output row. `pack(rows)` also lays it out once for
    MKL's matmul at that many input rows, without MKL re-packing the weight inside every call (equal
    to `linear` on the single matmuls checked; the loop's log-probs are tested against the
    learner's). LoRA factors are looked up per call (`bind`), so an adapter loaded into the model is
    the one used."""

    def __init__(self, modules: list):
        self.modules = modules
        states = [int8_state(_split(m)[0]) for m in modules]
        self.sizes = [st.CB.shape[0] for st in states]
        self.weight = torch.empty(sum(self.sizes), states[0].CB.shape[1])
        row = 0
        for st in states:
            self.weight[row : row + st.CB.shape[0]].copy_(st.CB.data).mul_(st.SCB.unsqueeze(1).mul(1.0 / 127.0))
            row += st.CB.shape[0]
        self.packed, self.packed_rows, self.loras = None, 0, []
        self.named: list[list] = []  # per part, per adapter of a mixed call: (A, B, scaling) or None

    def pack(self, rows: int) -> None:
        if _packable() and rows != self.packed_rows:
            self.packed, self.packed_rows = torch.ops.mkl._mkl_reorder_linear_weight(self.weight, rows), rows

    def bind(self, adapters: list[str] | None = None) -> None:
        """The active adapter's factors, or (`adapters`) each named adapter's, for rows that name it."""
        self.loras = [_split(m)[1] for m in self.modules]
        self.named = [[_named_lora(m, name) for name in adapters] for m in self.modules] if adapters else []

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        """x @ weight.T, every part at once (benchmarks/int8_decode.py swaps in int8 arithmetic here)."""
        if self.packed is not None and x.shape[:-1].numel() == self.packed_rows:
            return torch.ops.mkl._mkl_linear(x, self.packed, self.weight, None, self.packed_rows)
        return F.linear(x, self.weight)

    def __call__(self, x: torch.Tensor, policy_rows: int | RowAdapters) -> list[torch.Tensor]:
        """x @ weight.T split by part, each part plus its LoRA delta on the first `policy_rows` rows
        (or, RowAdapters, each row's own adapter's delta; none on rows of index -1)."""
        parts = list(self.matmul(x).split(self.sizes, dim=-1))
        if isinstance(policy_rows, RowAdapters):
            for i, loras in enumerate(self.named):
                for k, rows in policy_rows.groups:
                    if loras[k] is not None:
                        a, b, scale = loras[k]
                        parts[i] = parts[i].index_add(0, rows, F.linear(F.linear(x[rows], a), b) * scale)
            return parts
        for i, lora in enumerate(self.loras):
            if lora is not None:
                a, b, scale = lora
                delta = F.linear(F.linear(x[:policy_rows], a), b) * scale
                parts[i] = torch.cat([parts[i][:policy_rows] + delta, parts[i][policy_rows:]])
        return parts


class LeanDecoder:
    """The frozen base of a Llama-architecture policy laid out for decoding; the adapter is read from
    the model at each call. Holds one fp32 copy of the int8 weights (and MKL's packed copy)."""

    def __init__(self, model):
        lm = causal_lm_of(model)
        cfg = lm.config
        self.heads, self.kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.scale = 1.0 / math.sqrt(self.head_dim)
        body = lm.model
        self.embed, self.norm, self.rotary = body.embed_tokens, body.norm, body.rotary_emb
        self.head = lm.get_output_embeddings().weight
        self.head_packed, self.head_rows = None, 0
        self.shared = 0  # bottom layers without the adapter (prepare): policy and reference rows share them
        self.layers = []
        for block in body.layers:
            a, m = block.self_attn, block.mlp
            self.layers.append(
                (
                    block.input_layernorm,
                    Projections([a.q_proj, a.k_proj, a.v_proj]),
                    Projections([a.o_proj]),
                    block.post_attention_layernorm,
                    Projections([m.gate_proj, m.up_proj]),
                    Projections([m.down_proj]),
                )
            )

    def prepare(self, rows: int, adapters: list[str] | None = None) -> None:
        """Before a call: the adapter now in the model (or the named `adapters` of a mixed call), and
        weights packed for `rows` decode rows. The bottom layers without the adapter (model.lora_layers)
        compute the same for a policy row and its reference row: step() runs them on the policy rows only,
        so they are packed for half the rows."""
        projections = [(layer[1], layer[2], layer[4], layer[5]) for layer in self.layers]
        for projs in projections:
            for proj in projs:
                proj.bind(adapters)
        plain = [all(lora is None for proj in projs for lora in proj.loras) for projs in projections]
        self.shared = 0 if adapters else next((i for i, p in enumerate(plain) if not p), len(plain))
        for i, projs in enumerate(projections):
            for proj in projs:
                proj.pack(rows // 2 if i < self.shared else rows)
        if _packable() and rows != self.head_rows:
            self.head_packed = torch.ops.mkl._mkl_reorder_linear_weight(self.head.detach(), rows)
            self.head_rows = rows

    def step(self, ids, positions, allowed, cache, start: int, policy_rows: int | RowAdapters) -> torch.Tensor:
        """ids/positions (N, T) at cache slots [start, start + T); allowed (N, 1, T, start + T) bool.
        Returns the last position's hidden state after the final norm, (N, H). With `policy_rows` = N / 2
        the rows [N / 2, N) are the reference's copies of the policy rows' inputs (decode_with_reference):
        the layers below the adapter (self.shared) run on the policy rows only, their KV cache filled for
        those rows, and their output is copied to the reference rows."""
        n, t = ids.shape
        # rows through the layers without the adapter: the policy rows only when the rest copy them
        rows = n // 2 if self.shared and isinstance(policy_rows, int) and 2 * policy_rows == n else n
        x = self.embed(ids[:rows])
        cos, sin = self.rotary(x, positions)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        hd, end = self.head_dim, start + t
        for index, ((norm1, qkv, o, norm2, gate_up, down), (k_cache, v_cache)) in enumerate(zip(self.layers, cache)):
            if index == self.shared and rows < n:  # the first adapted layer: the reference rows join here
                x, rows = torch.cat([x, x]), n
            if rows < n:
                k_cache, v_cache = k_cache[:rows], v_cache[:rows]
            q, k, v = qkv(norm1(x), policy_rows)
            q = q.view(rows, t, self.heads, hd).transpose(1, 2)
            k = k.view(rows, t, self.kv_heads, hd).transpose(1, 2)
            v = v.view(rows, t, self.kv_heads, hd).transpose(1, 2)
            q = (q * cos[:rows]) + (_rotate_half(q) * sin[:rows])
            k = (k * cos[:rows]) + (_rotate_half(k) * sin[:rows])
            k_cache[:, :, start:end] = k
            v_cache[:, :, start:end] = v
            attn = F.scaled_dot_product_attention(
                q, k_cache[:, :, :end], v_cache[:, :, :end], attn_mask=allowed[:rows], scale=self.scale, enable_gqa=True
            )
            x = x + o(attn.transpose(1, 2).reshape(rows, t, self.heads * hd), policy_rows)[0]
            gate, up = gate_up(norm2(x), policy_rows)
            x = x + down(F.silu(gate) * up, policy_rows)[0]
        if rows < n:  # no layer has the adapter: the reference rows are the policy rows
            x = torch.cat([x, x])
        return self.norm(x[:, -1])

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.head_packed is not None and hidden.shape[0] == self.head_rows:
            return torch.ops.mkl._mkl_linear(hidden, self.head_packed, self.head, None, self.head_rows)
        return F.linear(hidden, self.head)


def _prefill(
    decoder: LeanDecoder, ids: torch.Tensor, mask: torch.Tensor, cache: list, row_adapters: torch.Tensor | None = None
) -> torch.Tensor:
    """The prompts' pass, policy rows then reference rows: the cache's first P slots filled, the last
    position's hidden state (2B, H) returned. Rows with the same prompt (a GRPO/RLOO group, a
    multi-turn episode's first turn) are computed once and copied: a group of G costs 1/G.
    row_adapters (B,): each policy row's adapter of a mixed call (rows merge only under the same one)."""
    b, p = ids.shape
    key = torch.cat([ids, mask] if row_adapters is None else [ids, mask, row_adapters[:, None]], dim=1)
    unique, inverse = torch.unique(key, dim=0, return_inverse=True)
    u = unique.shape[0] if unique.shape[0] < b else b
    if u < b:
        ids, mask = unique[:, :p], unique[:, p : 2 * p]
        if row_adapters is not None:
            row_adapters = unique[:, 2 * p]
        kv = (2 * u, decoder.kv_heads, p, decoder.head_dim)
        own = [(torch.empty(kv), torch.empty(kv)) for _ in decoder.layers]
    else:
        own = cache
    keys = torch.cat([mask, mask]).bool()
    causal = torch.ones(p, p, dtype=torch.bool).tril()
    # a left-pad query attends to itself too: no row of the mask is empty (an empty row is NaN in SDPA)
    allowed = (causal & keys[:, None, :]) | torch.eye(p, dtype=torch.bool)
    policy = u if row_adapters is None else RowAdapters(torch.cat([row_adapters, torch.full_like(row_adapters, -1)]))
    hidden = decoder.step(
        torch.cat([ids, ids]), position_ids(torch.cat([mask, mask])), allowed[:, None], own, 0, policy
    )
    if u == b:
        return hidden
    rows = torch.cat([inverse, inverse + u])  # each of the 2B rows from its unique prompt's row
    for (k, v), (k_own, v_own) in zip(cache, own):
        k[:, :, :p] = k_own[rows]
        v[:, :, :p] = v_own[rows]
    return hidden[rows]


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def held_bytes(model) -> int:
    """What a LeanDecoder of `model` holds: two fp32 copies of the int8 weights (one packed) and a
    packed LM head (runtime/plan.py counts the same)."""
    lm = causal_lm_of(model)
    return 2 * dequantized_bytes(lm) + lm.get_output_embeddings().weight.numel() * 4


def unsupported(model, device: str = "cpu") -> str | None:
    """Why the lean loop does not apply to `model` (a policy in PPO's train-mode numerics) on the
    role's `device`, or None."""
    lm = causal_lm_of(model)
    cfg = lm.config
    if getattr(cfg, "model_type", None) != "llama":
        return f"a {getattr(cfg, 'model_type', type(lm).__name__)} model (the lean loop knows Llama only)"
    if device != "cpu" or lm.device.type != "cpu":
        return "a policy on a GPU (the lean loop is for CPU decoding)"
    if getattr(cfg, "attention_bias", False) or getattr(cfg, "mlp_bias", False) or cfg.hidden_act != "silu":
        return "projection biases or an activation other than silu"
    if (getattr(cfg, "rope_parameters", None) or {}).get("rope_type", "default") != "default":
        return "a scaled rotary embedding"
    if not _adapters_supported(lm):
        return "several active adapters, or one merged into the base"
    quantized = {id(m) for m in int8_layers(lm)}
    for block in lm.model.layers:
        for name in PROJECTIONS:
            base, _ = _split(getattr(block.self_attn if name in PROJECTIONS[:4] else block.mlp, name))
            if id(base) not in quantized or not base.training:  # train-mode int8 only (models.dequant)
                return "base projections that are not 8-bit in train mode (model.quant=8bit)"
            state = int8_state(base)
            if state.CB is None or state.has_fp16_weights:
                return "8-bit projections without int8 weights"
    return None


def sample_lean(
    decoder: LeanDecoder,
    tokenizer,
    prompts: list[str],
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    group_size: int = 1,
    seed: int = 0,
    policy_version: int = 0,
) -> Rollout:
    """models.generate.sample_with_reference through the lean loop: the same Rollout, reference
    log-probs included, from `decoder` (a LeanDecoder of the policy, reused across calls)."""
    expanded, enc = encode_prompts(tokenizer, prompts, group_size, "cpu")
    torch.manual_seed(seed)  # reproducible sampling for a given (run seed, iteration, shard)
    tokens, ref, _ = decode_with_reference(
        decoder,
        enc["input_ids"],
        enc["attention_mask"],
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        eos=tokenizer.eos_token_id,
        pad=tokenizer.pad_token_id,
    )
    return make_rollout(tokenizer, expanded, enc, tokens, policy_version, group_size, temperature, ref)


@torch.no_grad()
def decode_with_reference(
    decoder: LeanDecoder,
    ids: torch.Tensor,
    mask: torch.Tensor,
    *,
    max_new_tokens: int,
    temperature: float,
    eos: int,
    pad: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left-padded prompts (B, P) -> sampled tokens (B, R), the reference's log-probs of them (B, R)
    and the sampling policy's (B, R), as this loop computed them.

    Rows [0, B) run with the adapter and sample; rows [B, 2B) run without it and are fed the same
    tokens, as in models.generate.sample_with_reference. The caller seeds torch's generator."""
    b, p = ids.shape
    n, total = 2 * b, p + max_new_tokens
    decoder.prepare(n)
    kv = (n, decoder.kv_heads, total, decoder.head_dim)
    cache = [(torch.empty(kv), torch.empty(kv)) for _ in decoder.layers]
    keys = torch.cat([mask, mask]).bool()  # (2B, P): real prompt tokens
    positions = position_ids(torch.cat([mask, mask]))
    hidden, start = _prefill(decoder, ids, mask, cache), p
    done = torch.zeros(b, dtype=torch.bool)
    tokens, ref_lps, lps = [], [], []
    for _ in range(max_new_tokens):
        logp = torch.log_softmax(decoder.logits(hidden).float() / temperature, dim=-1)  # (2B, V)
        token = inverse_cdf_draw(logp[:b].exp(), torch.rand(b))
        token = torch.where(done, torch.full_like(token, pad), token)  # finished rows only pad
        tokens.append(token)
        ref_lps.append(logp[b:].gather(1, token[:, None]).squeeze(1))
        lps.append(logp[:b].gather(1, token[:, None]).squeeze(1))
        done |= token == eos
        if bool(done.all()) or len(tokens) == max_new_tokens:
            break
        keys = torch.cat([keys, torch.ones(n, 1, dtype=torch.bool)], dim=1)
        positions = positions[:, -1:] + 1
        # the new token attends to every real token so far
        hidden = decoder.step(torch.cat([token, token])[:, None], positions, keys[:, None, None, :], cache, start, b)
        start += 1
    return torch.stack(tokens, dim=1), torch.stack(ref_lps, dim=1), torch.stack(lps, dim=1)
