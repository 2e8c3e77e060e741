"""Quantized causal LM + LoRA adapter + value head: the policy every PPO role holds.

The reference policy is this same model under `disable_adapter()`; no second base is loaded."""

from __future__ import annotations

import contextlib
import logging
import warnings

import torch
from torch import nn

from rlhf_ray.errors import UserError
from rlhf_ray.models.shapes import build_quantized, is_shape_dir

log = logging.getLogger(__name__)

# LoRA targets per architecture (attention query/value projections, as in the LoRA paper).
DEFAULT_TARGETS = {
    "llama": ["q_proj", "v_proj"],
    "mistral": ["q_proj", "v_proj"],
    "qwen2": ["q_proj", "v_proj"],
    "qwen3": ["q_proj", "v_proj"],
    "gemma": ["q_proj", "v_proj"],
    "opt": ["q_proj", "v_proj"],
    "gpt_neox": ["query_key_value"],
    "gpt2": ["c_attn"],
    "bert": ["query", "value"],
    "roberta": ["query", "value"],
    "distilbert": ["q_lin", "v_lin"],
}


def quiet_warnings() -> None:
    """bitsandbytes 8-bit matmuls on CPU cast activations to fp16 and warn on every call."""
    warnings.filterwarnings("ignore", message=".*MatMul8bitLt.*")
    warnings.filterwarnings("ignore", message=".*inputs will be cast from.*")
    # peft's k-bit preparation calls a transformers API deprecated in v5; harmless.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
    warnings.filterwarnings("ignore", message=".*gradient_checkpointing_enable.*deprecated.*")  # renamed in v5, same
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # per-load weight bars flood actor logs


def role_device(num_gpus: float) -> str:
    """The one device rule: a role on a GPU share uses CUDA when this process can see one (a CPU-only
    host that declares GPUs to Ray, as the tests do, runs the role on the CPU). A role holding part of
    a card is capped at that share of its memory (cap_gpu_share)."""
    if num_gpus > 0 and torch.cuda.is_available():
        cap_gpu_share(num_gpus)
        return "cuda"
    return "cpu"


def cap_gpu_share(fraction: float) -> float | None:
    """Cap this process's CUDA allocations at `fraction` of the card when roles share it, so a role
    that overruns its plan fails with its own out-of-memory error instead of taking its neighbours'
    memory. The CUDA context and cuBLAS workspaces lie outside the cap (the planner counts them
    apart). Returns the cap set; None for a whole card or no CUDA."""
    if not 0 < fraction < 1 or not torch.cuda.is_available():
        return None
    torch.cuda.set_per_process_memory_fraction(fraction, torch.cuda.current_device())
    return fraction


def policy_dtype(device: str) -> torch.dtype:
    """The policy's unquantized tensors (embeddings, head, norms) and activations: bf16 on a GPU,
    whatever the quantization (a float32 base next to int8/NF4 layers would double those and the KV
    cache); fp32 on a CPU, where most chips emulate bf16 matmuls (docs/benchmarks.md)."""
    return torch.bfloat16 if device == "cuda" else torch.float32


def bnb_config(quant: str, skip_modules: list[str] | None = None, device: str = "cuda"):
    """LLM.int8 for 8-bit; NF4 + double quantization for 4-bit, computing in bf16 on a GPU and in fp32
    on a CPU (most CPUs have no bf16 matrix units: emulated bf16 made a 4-bit PPO update ~20x slower
    than fp32 on the 2-core AVX2 development machine, docs/benchmarks.md)."""
    from transformers import BitsAndBytesConfig

    if quant == "none":
        return None
    if quant == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip_modules)
    if quant == "4bit":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16 if device == "cuda" else torch.float32,
            llm_int8_skip_modules=skip_modules,
        )
    raise ValueError(f"unknown quant {quant!r}")


def load_kwargs(
    quant: str, device: str, skip_modules: list[str] | None = None, dtype: torch.dtype | None = None
) -> dict:
    """from_pretrained kwargs: quantization config, placement, and the unquantized dtype (`dtype`;
    None: bf16 for an unquantized model on a GPU, else fp32)."""
    kwargs: dict = {"device_map": {"": 0} if device == "cuda" else device}
    qconfig = bnb_config(quant, skip_modules, device)
    if qconfig is not None:
        kwargs["quantization_config"] = qconfig
    if dtype is None:
        dtype = torch.bfloat16 if device == "cuda" and quant == "none" else torch.float32
    kwargs["dtype"] = dtype
    return kwargs


def load_causal_lm(path: str, quant: str, device: str):
    from transformers import AutoModelForCausalLM

    quiet_warnings()
    if is_shape_dir(path):  # random-weight large shapes are built in memory, quantized layer by layer
        return build_quantized(path, quant, device)
    return AutoModelForCausalLM.from_pretrained(path, **load_kwargs(quant, device, ["lm_head"], policy_dtype(device)))


def target_modules_for(model, configured: list[str] | None) -> list[str]:
    if configured:
        return list(configured)
    model_type = model.config.model_type
    if model_type not in DEFAULT_TARGETS:
        raise UserError(f"no default LoRA targets for model type '{model_type}': set model.target_modules")
    return DEFAULT_TARGETS[model_type]


# Non-reentrant checkpointing: LoRA grads flow even when no layer input requires grad, and torch
# no longer warns about (or, in later versions, rejects) an implicit use_reentrant.
NON_REENTRANT = {"use_reentrant": False}


def top_layers(model, n: int | None) -> list[int] | None:
    """model.lora_layers: the indices of the top `n` decoder layers (None: every layer)."""
    if n is None:
        return None
    total = model.config.num_hidden_layers
    if not 0 < n <= total:
        raise UserError(f"model.lora_layers={n}: the policy has {total} decoder layers; use 1 to {total} (or null)")
    return list(range(total - n, total))


def attach_lora(
    model,
    r: int,
    alpha: int,
    dropout: float,
    targets: list[str] | None,
    task_type: str = "CAUSAL_LM",
    gradient_checkpointing: bool = False,
    upcast_16bit: bool = True,
    layers: int | None = None,
):
    """Freeze the (quantized) base and wrap it with a fresh trainable LoRA adapter.

    upcast_16bit=False keeps 16-bit embeddings/norms as they are (peft's k-bit preparation would
    make them fp32: +1.24 GB on a 20B model)."""
    from peft import get_peft_model, prepare_model_for_kbit_training

    kbit = getattr(model, "is_loaded_in_8bit", False) or getattr(model, "is_loaded_in_4bit", False)
    if kbit and upcast_16bit:
        # Casts norms to fp32 and makes inputs require grad so LoRA grads flow through int8 layers.
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=gradient_checkpointing, gradient_checkpointing_kwargs=NON_REENTRANT
        )
    elif gradient_checkpointing:
        model.requires_grad_(False)
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=NON_REENTRANT)
    lora = lora_config(r, alpha, dropout, target_modules_for(model, targets), task_type, top_layers(model, layers))
    return get_peft_model(model, lora)


LORA_PARTS = ("lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B", "lora_magnitude_vector")


def adapter_parameters(model, adapter_name: str) -> list[nn.Parameter]:
    """The parameters of one named LoRA adapter, found by name (`...q_proj.lora_A.<name>.weight`),
    never by requires_grad (peft's set_adapter turns it off for every adapter it deactivates)."""
    params = []
    for name, param in model.named_parameters():
        parts = name.split(".")
        if any(a in LORA_PARTS and b == adapter_name for a, b in zip(parts, parts[1:])):
            params.append(param)
    if not params:
        raise ValueError(f"the model holds no LoRA adapter named {adapter_name!r}")
    return params


def lora_config(
    r: int,
    alpha: int,
    dropout: float,
    targets: list[str],
    task_type: str = "CAUSAL_LM",
    layers: list[int] | None = None,
):
    """The LoraConfig attach_lora builds (a sweep adds one per run to the same base)."""
    from peft import LoraConfig

    return LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=targets,
        task_type=task_type,
        layers_to_transform=layers,
    )


class ValueHead(nn.Module):
    """Scalar value per token from the policy's last hidden state; kept in fp32, never quantized."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.summary = nn.Linear(hidden_size, 1)
        nn.init.normal_(self.summary.weight, std=1.0 / (hidden_size + 1))
        nn.init.zeros_(self.summary.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        # hidden (B, T, H) -> (B, T)
        return self.summary(hidden.float()).squeeze(-1)


def _zero_dropout_fields(obj) -> None:
    """Float attributes named like dropout rates (attention_dropout, hidden_dropout, resid_pdrop...)."""
    for name, value in list(vars(obj).items()):
        if ("dropout" in name or name.endswith("_pdrop")) and isinstance(value, float) and not isinstance(value, bool):
            setattr(obj, name, 0.0)


def ppo_numerics(model):
    """Put a policy in the one numerical mode every PPO role uses: train mode, dropout off.

    bitsandbytes int8 layers compute differently in train and eval mode (eval also quantizes the
    activations): on SmolLM2 8-bit we measured up to 0.5 nats of per-token log-prob difference,
    which made PPO ratios != 1 before any update. Train mode is the one gradients need and is the
    closer of the two to fp32 (0.21 vs 0.48 nats), so sampler, old/ref log-probs and updates all
    use it. Dropout stays off so a ratio is exactly 1 until the adapter changes (as TRL's PPO).
    HF attention applies `attention_dropout` functionally in train mode (a float copied from the
    config onto each attention module, no nn.Dropout), so those rates are zeroed too."""
    model.train()
    configs = {id(c): c for c in (getattr(m, "config", None) for m in model.modules()) if c is not None}
    for config in configs.values():
        if hasattr(config, "to_dict"):  # transformers PretrainedConfig (peft's config dicts are skipped)
            _zero_dropout_fields(config)
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
            module.eval()
        else:
            _zero_dropout_fields(module)
    return model


def reference_mode(model):
    """Context in which the policy acts as the frozen reference (LoRA disabled)."""
    return model.disable_adapter() if hasattr(model, "disable_adapter") else contextlib.nullcontext()


def causal_lm_of(model):
    """The transformers *ForCausalLM inside a peft wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def memory_footprint_bytes(model) -> int:
    return int(causal_lm_of(model).get_memory_footprint())


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token  # generation pads with EOS; masks handle it
    return tokenizer
