"""Memory planner: bytes per role and per layout, from model configs only (meta device, no weights).

Used by `rlhf-ray plan` and, before any actor starts, by `rlhf-ray ppo` (cluster.layout: auto picks
`fused` when separate copies of the base cannot fit; a plan that cannot fit at all is refused).
A GPU plan counts the roles with a GPU fraction (all roles when none has one) against one GPU;
a CPU plan counts every role against the host's available RAM. Multi-node placement is not planned.

The estimates, per role:
- base: decoder-layer Linears quantized (int8: 1 byte/weight + an fp32 scale per row; NF4: half a
  byte/weight + one 8-bit absmax per 64-weight block + an fp32 per 256 blocks, double quantization),
  everything else (embeddings, LM head, norms, biases) in the unquantized dtype.
- lora: r x (in + out) fp32 per target Linear; training keeps weights + grads + 2 AdamW moments.
- activations of one training micro-batch (Korthikanti et al. 2022 style count per token and layer),
  or only the layer inputs plus one layer when the body is gradient-checkpointed.
- lm_head_chunk: (rows, chunk, V) fp32 buffers alive at once in the chunked head's backward (measured
  in tests/unit/test_forward_memory.py: about five).
- kv_cache: 2 x layers x tokens x kv width in the activation dtype, for the generation batch, plus
  the decode step's logits. A role's total counts training or generation, whichever is larger.
- mapped_checkpoint (host plans): from_pretrained maps the safetensors file and the unquantized
  tensors stay views into it, so the whole file stays resident in the process (measured: SmolLM2's
  517 MB file adds ~415 MB file-backed RSS); the unquantized part is already in `base`.
- dequant: bitsandbytes matmuls with gradients (and int8 on CPU) dequantize one whole weight to the
  activation dtype per call: the largest quantized Linear, transiently. With the int8 dequant cache
  (CPU int8, model.dequant_cache on, or auto where it fits: models/dequant.py) a role holds one fp32
  copy of every quantized Linear instead (kept for the run); the generator's lean decode loop holds
  two and a packed LM head (models/decode.py).
- overhead: a CUDA context per process on GPU, or the Python/torch runtime per process on CPU."""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field

from rlhf_ray.config.schema import Config
from rlhf_ray.errors import UserError
from rlhf_ray.models.assets import resolve_model
from rlhf_ray.models.dequant import cache_fits
from rlhf_ray.models.policy import target_modules_for, top_layers
from rlhf_ray.rewards.ngrams import is_ngram_model
from rlhf_ray.store.refs import NGRAM_BACKBONE

GIB = 2**30
CUDA_CONTEXT = 512 * 2**20  # CUDA context + cuBLAS workspaces per process (not in torch's allocated bytes)
HOST_RUNTIME = 470 * 2**20  # measured: RSS of a process after importing torch, transformers, peft, bitsandbytes, ray
HEAD_CHUNK_BUFFERS = 5
# A layout "fits" within this share of the device: allocator fragmentation and the estimate's own
# error (checked within 25% of a measured run) need room.
HEADROOM = 0.9
NF4_BLOCK, NF4_NESTED_BLOCK = 64, 256
# Largest consumer -> the key that shrinks it (for the one-line refusal).
REMEDY = {
    "base": "model.quant=4bit or a smaller model.policy",
    "lora": "model.lora_r",
    "value_head": "algo.advantage=grpo (no critic)",
    "activations": "model.gradient_checkpointing=true or a smaller ppo.mini_batch_size (or more ppo.grad_accum)",
    "lm_head_chunk": "model.logprob_chunk",
    "kv_cache": "ppo.batch_size or generate.max_new_tokens",
    "dequant": "model.quant (or a model with narrower layers)",
    "mapped_checkpoint": "a smaller model.policy or a 16-bit checkpoint of it (the loaded file stays mapped)",
    "overhead": "fewer actors (cluster.num_generators / num_scorers)",
}


NGRAM_SCORER_BYTES = 64 * 2**20  # reward.backbone=ngrams: measured ~40 MB resident for IMDB's 248k n-grams


@dataclass
class RoleBytes:
    base: int = 0
    lora: int = 0
    value_head: int = 0
    activations: int = 0
    lm_head_chunk: int = 0
    kv_cache: int = 0
    dequant: int = 0
    mapped_checkpoint: int = 0
    overhead: int = 0

    @property
    def total(self) -> int:
        # Training (activations + head chunk) and generation (KV cache) never overlap in one process.
        fixed = self.base + self.lora + self.value_head + self.dequant + self.mapped_checkpoint + self.overhead
        return fixed + max(self.activations + self.lm_head_chunk, self.kv_cache)

    def biggest(self) -> str:
        return max(asdict(self).items(), key=lambda kv: kv[1])[0]


@dataclass
class LayoutPlan:
    layout: str
    roles: dict[str, RoleBytes]
    counts: dict[str, int]  # actors per role
    total: int = 0  # bytes on the planned device (a GPU plan leaves out roles that run on the host)
    fits: bool = False
    gpu_fractions: dict[str, float] = field(default_factory=dict)
    on_host: list[str] = field(default_factory=list)  # roles outside a GPU plan (their cluster.*_gpus is 0)


@dataclass
class ModelShape:
    """What the arithmetic needs from a causal LM config (+ its module tree on the meta device)."""

    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_width: int  # kv heads x head dim
    vocab: int
    quantized_linears: list[tuple[int, int]]  # (in, out) of every decoder-layer Linear
    other_params: int  # embeddings, LM head, norms, biases: kept unquantized
    lora_params: int  # r x (in + out) summed over LoRA targets
    model_type: str = ""  # the config's model_type (the lean decode loop knows llama)


def layer_index(module_name: str) -> int | None:
    """The decoder layer a module's name places it in ("model.layers.12.self_attn.q_proj" -> 12), peft's way."""
    found = re.search(r"\.(\d+)\.", module_name)
    return int(found.group(1)) if found else None


def model_shape(config, lora_r: int, targets: list[str] | None, lora_layers: int | None = None) -> ModelShape:
    import torch
    from torch import nn
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    names = target_modules_for(model, targets)
    adapted = set(top_layers(model, lora_layers) or range(config.num_hidden_layers))
    head = model.get_output_embeddings()
    linears, lora, quantized_ids = [], 0, set()
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and module is not head:
            linears.append((module.in_features, module.out_features))
            quantized_ids.add(id(module.weight))
            if name.split(".")[-1] in names and layer_index(name) in adapted:
                lora += lora_r * (module.in_features + module.out_features)
    other = sum(p.numel() for p in model.parameters() if id(p) not in quantized_ids)
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    return ModelShape(
        config.num_hidden_layers,
        config.hidden_size,
        config.intermediate_size,
        heads,
        kv_heads * (config.hidden_size // heads),
        config.vocab_size,
        linears,
        other,
        lora,
        getattr(config, "model_type", ""),
    )


def quantized_bytes(n_in: int, n_out: int, quant: str, dense_bytes: int) -> int:
    n = n_in * n_out
    if quant == "8bit":
        return n + 4 * n_out  # int8 weights + one fp32 scale per output row (LLM.int8 vectorwise)
    if quant == "4bit":
        blocks = math.ceil(n / NF4_BLOCK)
        return n // 2 + blocks + 4 * math.ceil(blocks / NF4_NESTED_BLOCK)  # NF4 + 8-bit absmax + fp32 nested absmax
    return n * dense_bytes


def base_bytes(s: ModelShape, quant: str, dense_bytes: int) -> int:
    return sum(quantized_bytes(i, o, quant, dense_bytes) for i, o in s.quantized_linears) + s.other_params * dense_bytes


def train_activation_bytes(s: ModelShape, rows: int, seq: int, act_bytes: int, checkpointing: bool) -> int:
    """Saved for backward by one micro-batch: per token and layer ~10 h + 3 I values (norm, q/k/v,
    attention and MLP inputs/outputs) plus attention probabilities (heads x seq per token)."""
    tokens = rows * seq
    per_layer = tokens * (10 * s.hidden + 3 * s.intermediate + s.heads * seq) * act_bytes
    if checkpointing:  # layer inputs only, plus one layer recomputed at a time
        return tokens * s.hidden * act_bytes * s.layers + per_layer
    return per_layer * s.layers


def checkpoint_bytes(path: str) -> int:
    """Weights files a from_pretrained load maps (0 for a hub id or a shape built in memory)."""
    from pathlib import Path

    directory = Path(path)
    return sum(f.stat().st_size for f in directory.glob("*.safetensors")) if directory.is_dir() else 0


def dense_dtype_bytes(on_gpu: bool) -> int:
    """The dtype of the unquantized tensors and activations, as models/policy.py (policy_dtype) and
    models/shapes.py load them: bf16 on a GPU whatever the quantization, fp32 on a CPU."""
    return 2 if on_gpu else 4


def _gen_rows(cfg: Config, generators: int) -> int:
    """Rows of one generator's decode batch (doubled by the adapter-off rows of generate.reference_logprobs)."""
    rows = cfg.ppo.batch_size * cfg.samples_per_prompt() // generators
    return 2 * rows if cfg.reference_logprobs_on() else rows


def dequant_bytes(cfg: Config, s: ModelShape, dense: int, on_gpu: bool) -> int:
    """One weight dequantized per call, or the whole int8 dequant cache (CPU int8: models/dequant.py)."""
    if cfg.model.quant == "none":
        return 0
    cached = sum(i * o for i, o in s.quantized_linears) * 4
    if not on_gpu and cfg.model.quant == "8bit" and cfg.model.dequant_cache != "off":
        if cfg.model.dequant_cache == "on" or cache_fits(cached):
            return cached
    return max(i * o for i, o in s.quantized_linears) * dense


def lean_decode_bytes(cfg: Config, s: ModelShape, on_gpu: bool) -> int:
    """What the generator's lean decode loop holds (models/decode.py), or 0 where it would not run."""
    g = cfg.generate
    if on_gpu or s.model_type != "llama" or cfg.model.quant != "8bit" or not cfg.reference_logprobs_on():
        return 0
    held = 2 * sum(i * o for i, o in s.quantized_linears) * 4 + s.vocab * s.hidden * 4
    if g.decoder == "lean" or (g.decoder == "auto" and cfg.model.dequant_cache != "off" and cache_fits(held)):
        return held
    return 0


def policy_roles(cfg: Config, s: ModelShape, dense: int, on_gpu: bool) -> dict[str, RoleBytes]:
    """generator / learner (separate layout) and policy (fused: one base; phases never overlap)."""
    overhead = CUDA_CONTEXT if on_gpu else HOST_RUNTIME
    base = base_bytes(s, cfg.model.quant, dense)
    seq = cfg.data.prompt_max_tokens + cfg.response_tokens()  # multi-turn: the episode's token budget

    def sampling(rows: int) -> int:  # KV cache + fp32 logits of one decode step (and a processed copy)
        return 2 * s.layers * rows * seq * s.kv_width * dense + 2 * rows * s.vocab * 4

    micro = cfg.ppo.mini_batch_size // cfg.ppo.grad_accum
    acts = train_activation_bytes(s, micro, seq, dense, cfg.model.gradient_checkpointing)
    chunk = HEAD_CHUNK_BUFFERS * micro * min(cfg.model.logprob_chunk, cfg.response_tokens()) * s.vocab * 4
    value_head = (s.hidden + 1) * 16 if cfg.algo.advantage == "gae" else 0  # fp32 weights + grads + AdamW moments
    lora_train = s.lora_params * 16
    dequant = dequant_bytes(cfg, s, dense, on_gpu)
    common = dict(base=base, dequant=dequant, overhead=overhead)
    # the generator's lean decode loop keeps the frozen base laid out for the run: the fp32 copy of its
    # int8 weights, MKL's packed copy and a packed LM head (models/decode.py), instead of the dequant cache
    lean = lean_decode_bytes(cfg, s, on_gpu)
    generator = dict(common, dequant=lean) if lean else common
    train = dict(lora=lora_train, value_head=value_head, activations=acts, lm_head_chunk=chunk)
    return {
        "generator": RoleBytes(
            lora=s.lora_params * 4, kv_cache=sampling(_gen_rows(cfg, cfg.cluster.num_generators)), **generator
        ),
        "learner": RoleBytes(**train, **common),
        # One base for both roles; the host frees the KV cache before training and the grads before sampling
        # (the lean loop's layout of the base stays beside the learner's dequant cache).
        "policy": RoleBytes(kv_cache=sampling(_gen_rows(cfg, 1)), **train, **dict(common, dequant=dequant + lean)),
    }


def scorer_role(cfg: Config, config, on_gpu: bool) -> RoleBytes:
    import torch
    from transformers import AutoModelForSequenceClassification

    with torch.device("meta"):
        model = AutoModelForSequenceClassification.from_config(config)
    per_param = {"none": 4, "8bit": 1, "4bit": 0.5}[cfg.reward.quant]
    r = cfg.reward
    tokens = r.batch_size * r.max_length
    # inference: one layer's intermediate tensors alive at a time
    acts = tokens * (4 * config.hidden_size + config.intermediate_size + config.num_attention_heads * r.max_length) * 4
    params = sum(p.numel() for p in model.parameters())
    return RoleBytes(base=int(params * per_param), activations=acts, overhead=CUDA_CONTEXT if on_gpu else HOST_RUNTIME)


@dataclass
class Plan:
    device: str  # "gpu" or "host"
    budget: int  # bytes the roles may use on that device
    layouts: dict[str, LayoutPlan]
    chosen: str | None = None

    def to_json(self) -> dict:
        out = {"device": self.device, "budget_bytes": self.budget, "chosen_layout": self.chosen, "layouts": {}}
        for name, lp in self.layouts.items():
            out["layouts"][name] = {
                "total_bytes": lp.total,
                "fits": lp.fits,
                "counts": lp.counts,
                "gpu_fractions": lp.gpu_fractions,
                "on_host": lp.on_host,
                "roles": {role: {**asdict(rb), "total": rb.total} for role, rb in lp.roles.items()},
            }
        return out


def _layout(
    name: str, roles: dict[str, RoleBytes], counts: dict[str, int], budget: int, gpu_share: dict[str, float] | None
) -> LayoutPlan:
    """gpu_share: each role's GPU fraction in a GPU plan (None for a host plan)."""
    on_host = [r for r in counts if gpu_share is not None and gpu_share[r] == 0]
    total = sum(roles[r].total * n for r, n in counts.items() if r not in on_host)
    # A share of the one GPU per actor in proportion to its need (what cluster.*_gpus could be set to).
    fractions = (
        {r: round(min(1.0, roles[r].total / budget), 3) for r in counts if r not in on_host} if gpu_share else {}
    )
    return LayoutPlan(
        name, {r: roles[r] for r in counts}, counts, total, total <= HEADROOM * budget, fractions, on_host
    )


def gpu_shares(cfg: Config) -> dict[str, float]:
    """GPU fraction per planned role; a config without any GPU share is planned as all-on-GPU."""

    c = cfg.cluster
    shares = {
        "generator": c.generator_gpus,
        "learner": c.learner_gpus,
        "policy": cfg.fused_gpus(),
        "scorer": c.scorer_gpus,
    }
    return shares if any(shares.values()) else dict.fromkeys(shares, 1.0)


def device_budget(cfg: Config, gpu_memory_gb: float | None) -> tuple[bool, int]:
    c = cfg.cluster
    if gpu_memory_gb is not None:
        return True, int(gpu_memory_gb * GIB)
    if max(c.generator_gpus, c.learner_gpus, c.scorer_gpus) > 0:
        import torch

        if torch.cuda.is_available():
            return True, int(torch.cuda.get_device_properties(0).total_memory)
    import psutil

    return False, int(psutil.virtual_memory().available)


def read_config(path: str, key: str):
    """A model's config.json (local or hub); an unreadable one is a user error naming the key."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise UserError(
            f"{key}={path}: cannot read its config for the memory plan ({str(exc).splitlines()[0]})"
        ) from None


def policy_plan(cfg: Config, on_gpu: bool) -> dict[str, RoleBytes]:
    """generator / learner / fused policy bytes (reads only the policy's config)."""

    policy_path = resolve_model(cfg.model.policy, cfg.cache_dir())
    m = cfg.model
    s = model_shape(read_config(policy_path, "model.policy"), m.lora_r, m.target_modules, m.lora_layers)
    dense = dense_dtype_bytes(on_gpu)
    roles = policy_roles(cfg, s, dense, on_gpu)
    if not on_gpu:
        for role in roles.values():
            role.mapped_checkpoint = max(0, checkpoint_bytes(policy_path) - s.other_params * dense)
    return roles


def make_plan(cfg: Config, gpu_memory_gb: float | None = None, choose: bool = True) -> Plan:
    """Both layouts' bytes for this config and, with choose, the layout cluster.layout asks for
    (auto: the first that fits; UserError when none does)."""

    on_gpu, budget = device_budget(cfg, gpu_memory_gb)
    roles = policy_plan(cfg, on_gpu)
    reward_ref = cfg.reward.model or cfg.reward.backbone  # the trained classifier has its backbone's shape
    key = "reward.model" if cfg.reward.model else "reward.backbone"
    if reward_ref == NGRAM_BACKBONE or is_ngram_model(reward_ref):
        # a weight and a dict entry per n-gram (~250k on IMDB), in host memory whatever the device
        roles["scorer"] = RoleBytes(base=NGRAM_SCORER_BYTES, overhead=HOST_RUNTIME)
    else:
        roles["scorer"] = scorer_role(cfg, read_config(resolve_model(reward_ref, cfg.cache_dir()), key), on_gpu)
    c = cfg.cluster
    shares = gpu_shares(cfg) if on_gpu else None
    layouts = {
        "separate": _layout(
            "separate",
            roles,
            {"generator": c.num_generators, "scorer": c.num_scorers, "learner": c.num_learners},
            budget,
            shares,
        ),
        "fused": _layout("fused", roles, {"policy": 1, "scorer": c.num_scorers}, budget, shares),
    }
    plan = Plan("gpu" if on_gpu else "host", budget, layouts)
    if choose:
        plan.chosen = choose_layout(plan, c.layout, c.num_generators)
    return plan


def choose_layout(plan: Plan, requested: str, num_generators: int) -> str:
    """auto: separate when it fits, else fused; refuse (one line, naming the biggest consumer) when nothing fits."""
    candidates = ["separate", "fused"] if requested == "auto" else [requested]
    if requested == "auto" and num_generators > 1:
        candidates = ["separate"]  # the fused host is one process: it cannot serve several generators
    for name in candidates:
        if plan.layouts[name].fits:
            return name
    lp = plan.layouts[candidates[-1]]
    role, part = max(
        ((r, rb.biggest()) for r, rb in lp.roles.items() if r not in lp.on_host),
        key=lambda rp: getattr(lp.roles[rp[0]], rp[1]),
    )
    where = "GPU" if plan.device == "gpu" else "host RAM available"
    raise UserError(
        f"the {lp.layout} layout needs {lp.total / GIB:.1f} GiB but the {where} is {plan.budget / GIB:.1f} GiB "
        f"({HEADROOM:.0%} usable); "
        f"biggest consumer: {role} {part} ({getattr(lp.roles[role], part) / GIB:.1f} GiB): change {REMEDY[part]}"
    )


def format_plan(plan: Plan) -> str:
    parts = list(RoleBytes.__dataclass_fields__)
    lines = [f"device: {plan.device}, budget {plan.budget / GIB:.2f} GiB; chosen layout: {plan.chosen}"]
    for lp in plan.layouts.values():
        lines.append(f"\n[{lp.layout}] total {lp.total / GIB:.2f} GiB ({'fits' if lp.fits else 'does NOT fit'})")
        lines.append(f"  {'role':<14}" + "".join(f"{p:>18}" for p in parts) + f"{'total':>12}")
        for role, rb in lp.roles.items():
            cells = "".join(f"{getattr(rb, p) / GIB:>17.3f}G" for p in parts)
            host = "  (on the host: not in the GPU total)" if role in lp.on_host else ""
            lines.append(f"  {role + ' x' + str(lp.counts[role]):<14}{cells}{rb.total / GIB:>11.3f}G{host}")
        if lp.gpu_fractions:
            lines.append(f"  GPU fractions: {lp.gpu_fractions}")
    return "\n".join(lines)
