"""Set-up shared by every role process."""

from __future__ import annotations

from rlhf_ray.config.schema import Config
from rlhf_ray.models.policy import attach_lora, load_causal_lm, quiet_warnings
from rlhf_ray.models.shapes import is_shape_dir
from rlhf_ray.process import freeze_startup, set_torch_threads, set_up_process


def init_process(cfg: Config) -> None:
    set_up_process()
    freeze_startup()  # a Ray worker: torch is imported (unpickling the role), the model load is next
    quiet_warnings()
    set_torch_threads(cfg.cluster.torch_threads)


def load_policy(cfg: Config, policy_path: str, device: str, gradient_checkpointing: bool | None = None):
    """Quantized base + LoRA built the same way in every role, so adapters transfer exactly."""
    base = load_causal_lm(policy_path, cfg.model.quant, device)
    m = cfg.model
    gc = m.gradient_checkpointing if gradient_checkpointing is None else gradient_checkpointing
    return attach_lora(
        base,
        m.lora_r,
        m.lora_alpha,
        m.lora_dropout,
        m.target_modules,
        gradient_checkpointing=gc,
        layers=m.lora_layers,
        # On a GPU the base loads in bf16 (policy_dtype); peft's k-bit preparation would cast its
        # embeddings, head and norms back to fp32. Shapes are built in their planned dtype already.
        upcast_16bit=device != "cuda" and not is_shape_dir(policy_path),
    )
