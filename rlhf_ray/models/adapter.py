"""Adapter transfer (LoRA tensors only, versioned + hashed), saving, and merging into the base."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from rlhf_ray.batch import AdapterPayload
from rlhf_ray.errors import UserError
from rlhf_ray.models.assets import resolve_model
from rlhf_ray.models.policy import load_causal_lm
from rlhf_ray.store.refs import cache_root

VALUE_PREFIX = "value_head."


class AdapterIntegrityError(RuntimeError):
    """An adapter payload whose bytes do not match its hash, or whose tensors do not fit the model."""


def trainable_state(model, value_head=None, adapter_name: str = "default") -> dict[str, torch.Tensor]:
    """LoRA tensors (peft's own key naming, without the adapter's name: a payload of one named
    adapter loads into another) plus the value head's, as contiguous CPU tensors."""
    from peft import get_peft_model_state_dict

    lora = get_peft_model_state_dict(model, adapter_name=adapter_name)
    state = {k: v.detach().cpu().contiguous() for k, v in lora.items()}
    if value_head is not None:
        state.update({VALUE_PREFIX + k: v.detach().cpu().contiguous() for k, v in value_head.state_dict().items()})
    return state


def export_adapter(model, version: int, value_head=None, adapter_name: str = "default") -> AdapterPayload:
    data = st_save(trainable_state(model, value_head, adapter_name), metadata={"version": str(version)})
    return AdapterPayload(version=version, sha256=hashlib.sha256(data).hexdigest(), data=data)


def import_adapter(model, payload: AdapterPayload, value_head=None, adapter_name: str = "default") -> str:
    """Load a payload into `model` after verifying its hash; returns the verified hash."""
    from peft import set_peft_model_state_dict

    digest = hashlib.sha256(payload.data).hexdigest()
    if digest != payload.sha256:
        raise AdapterIntegrityError(
            f"adapter v{payload.version} failed its hash check (got {digest[:12]}, expected {payload.sha256[:12]}): "
            "the payload was corrupted or tampered with in transit"
        )
    state = st_load(payload.data)
    value_state = {k[len(VALUE_PREFIX) :]: v for k, v in state.items() if k.startswith(VALUE_PREFIX)}
    lora_state = {k: v for k, v in state.items() if not k.startswith(VALUE_PREFIX)}
    expected = set(trainable_state(model, adapter_name=adapter_name))
    if set(lora_state) != expected:
        missing, extra = sorted(expected - set(lora_state)), sorted(set(lora_state) - expected)
        raise AdapterIntegrityError(
            f"adapter v{payload.version} does not fit this model (missing {missing[:3]}, unexpected {extra[:3]})"
        )
    set_peft_model_state_dict(model, lora_state, adapter_name=adapter_name)
    if value_head is not None and value_state:
        value_head.load_state_dict(value_state)
    return digest


def save_adapter(
    model,
    directory: str | Path,
    value_head=None,
    *,
    base: str | None = None,
    tokenizer=None,
    card: str | None = None,
    adapter_name: str = "default",
) -> Path:
    """peft layout (`PeftModel.from_pretrained` loads it) + value_head.safetensors when present.

    `base` replaces the base model peft records (the local directory the model was loaded from,
    often inside the cache) with the name the user gave (embedded asset, hub id or path), so the
    directory means the same on another machine; `tokenizer` and `card` (README.md) make it
    self-contained."""
    from safetensors.torch import save_file

    directory = Path(directory)
    if adapter_name == "default":
        model.save_pretrained(str(directory))
    else:  # one named adapter of several (a sweep's run), laid out as a lone `default` one
        model.save_pretrained(str(directory), selected_adapters=[adapter_name])
        for path in (directory / adapter_name).iterdir():
            path.rename(directory / path.name)
        (directory / adapter_name).rmdir()
    if value_head is not None:
        save_file(
            {k: v.contiguous() for k, v in value_head.state_dict().items()}, str(directory / "value_head.safetensors")
        )
    if base is not None:
        config_path = directory / "adapter_config.json"
        config = json.loads(config_path.read_text())
        config["base_model_name_or_path"] = base
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(directory))
    if card is not None:
        (directory / "README.md").write_text(card)
    return directory


def load_adapter_model(
    directory: str | Path, quant: str = "none", device: str = "cpu", cache_dir: str | Path | None = None
):
    """A saved adapter on its base, the base found by the name in adapter_config.json through
    rlhf_ray.models.assets (an embedded asset is converted or built into this machine's cache on first
    use). The tokenizer loads from the same directory: AutoTokenizer.from_pretrained(directory)."""
    from peft import PeftModel

    directory = Path(directory)
    if not (directory / "adapter_config.json").exists():
        raise UserError(f"{directory} holds no adapter (adapter_config.json missing)")
    base = json.loads((directory / "adapter_config.json").read_text())["base_model_name_or_path"]
    model = load_causal_lm(resolve_model(base, cache_root(str(cache_dir) if cache_dir else None)), quant, device)
    return PeftModel.from_pretrained(model, str(directory))


def merge_adapter(base_path: str, adapter_dir: str | Path, out_dir: str | Path, dtype: str = "float32") -> Path:
    """Fold a LoRA into full/half-precision base weights (W += B @ A * alpha / r) and save a plain checkpoint."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_config.json").exists():
        raise UserError(f"{adapter_dir} holds no adapter (adapter_config.json missing): fix merge.adapter")
    base = AutoModelForCausalLM.from_pretrained(base_path, dtype=getattr(torch, dtype))
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    out_dir = Path(out_dir)
    merged.save_pretrained(str(out_dir))
    AutoTokenizer.from_pretrained(base_path).save_pretrained(str(out_dir))
    return out_dir
