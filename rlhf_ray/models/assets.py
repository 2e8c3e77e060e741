"""Resolve model and dataset names to something transformers/datasets can load offline.

A reference is one of: an embedded asset name (see rlhf_ray.store.refs), a local path, or a hub id
(passed through untouched for users who have a hub)."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

from rlhf_ray.errors import UserError
from rlhf_ray.models.shapes import parse_shape_name, write_shape_dir
from rlhf_ray.models.tiny import BUILDERS
from rlhf_ray.store.artifacts import CONTENT, Artifact, ModelRef, entry_problem, fetch, reusable, stamp
from rlhf_ray.store.checkpoint import atomic_write, publish_once, temp_dir
from rlhf_ray.store.locks import entry_lock, temp_name
from rlhf_ray.store.refs import BUILT_ASSETS, BUILT_VERSION, MODEL_ASSETS, NGRAM_FILE, looks_like_path, package_file

log = logging.getLogger(__name__)


@contextlib.contextmanager
def gguf_parsed_once() -> Iterator[None]:
    """transformers parses a GGUF file's metadata three times (config, weights, tokenizer: ~4 s each on 2
    cores, Python over the 49k-string vocabulary) and rebuilds gguf's tensor-name table for each of the
    file's tensors (~14 ms x 397): both memoized for the one conversion, which then takes ~0.6x the time
    (13 s against 21 s) and writes the same bytes (checked file by file against an unpatched conversion)."""
    import gguf

    reader, names = gguf.GGUFReader, gguf.get_tensor_name_map
    gguf.GGUFReader, gguf.get_tensor_name_map = functools.cache(reader), functools.cache(names)
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = reader, names


@contextlib.contextmanager
def no_load_bars() -> Iterator[None]:
    """transformers' two bars of a GGUF load ("Converting and de-quantizing GGUF tensors...", then
    "Loading weights" of the tensors just converted) held back: the conversion's one log line says
    what runs, and the bars would otherwise fill `make run`'s first screen (and a job's log)."""
    import transformers.modeling_gguf_pytorch_utils as gguf_utils
    from transformers.utils import logging as hf_logging

    bars, bar = hf_logging.is_progress_bar_enabled(), gguf_utils.tqdm
    hf_logging.disable_progress_bar()
    gguf_utils.tqdm = functools.partial(bar, disable=True)
    try:
        yield
    finally:
        gguf_utils.tqdm = bar
        if bars:
            hf_logging.enable_progress_bar()


def convert_gguf(gguf_path: Path, target: Path) -> Path:
    """Dequantize a GGUF checkpoint once into a normal safetensors checkpoint + tokenizer.

    transformers loads GGUF (dequantized to fp32) but refuses save_pretrained on it, so we save
    the state dict and a config without `quantization_config`. Written to a temp dir and renamed,
    so concurrent first use (several actors, several runs) cannot corrupt the cache."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting embedded GGUF %s -> %s (once)", gguf_path.name, target)
    tmp = temp_dir(target.parent, ".tmp-")
    try:
        kwargs = {"gguf_file": gguf_path.name}
        with gguf_parsed_once(), no_load_bars():
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
        stamp(tmp)  # content recorded before the entry appears: checked on every reuse
        publish_once(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def file_sha256(path: Path, cache_dir: Path) -> str:
    """sha256 of a file's content, remembered under cache_dir by (path, size, mtime): a replaced file
    gets a new key, an unchanged one is not re-read (the embedded GGUF is ~100 MB)."""
    st = path.stat()
    key = hashlib.sha256(f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:24]
    memo = cache_dir / "hashes" / key
    with contextlib.suppress(OSError):
        digest = memo.read_text().strip()
        if len(digest) == 64:
            return digest
    sha = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(2**24):
            sha.update(block)
    atomic_write(memo, sha.hexdigest().encode())
    return sha.hexdigest()


def cached(target: Path, build: Callable[[Path], Path]) -> Path:
    """A model cache entry built once by `build(target)`, its content checked on every reuse: a
    corrupted entry is moved aside and rebuilt, with a warning (one writer at a time, by lock)."""
    if (target / CONTENT).is_file() and entry_problem(target) is None:
        return target
    with entry_lock(target):
        if target.is_dir():
            if not (target / CONTENT).is_file():  # written before entries carried their content: stamped as found
                stamp(target)
                return target
            if reusable(target):
                return target
            aside = temp_name(target.parent, f".{target.name}.old-")
            os.rename(target, aside)
            shutil.rmtree(aside, ignore_errors=True)
        build(target)
        if not (target / CONTENT).is_file():
            stamp(target)
    return target


def resolve_model(ref: str, cache_dir: Path) -> str:
    """Return a local directory (embedded asset or path) or the hub id unchanged."""
    if ref in BUILT_ASSETS:
        return str(cached(Path(cache_dir) / "models" / f"{ref}-{BUILT_VERSION}", BUILDERS[ref]))

    if parse_shape_name(ref) is not None:  # config + tokenizer only; weights are built quantized at load
        target = Path(cache_dir) / "models" / f"{ref}-{BUILT_VERSION}"
        return str(cached(target, lambda t: write_shape_dir(ref, t)))
    if ref in MODEL_ASSETS:
        package, relative, hint = MODEL_ASSETS[ref]
        path = package_file(package, relative, hint)
        if path.suffix == ".gguf":
            target = Path(cache_dir) / "models" / f"{ref}-{file_sha256(path, Path(cache_dir))[:10]}"
            return str(cached(target, lambda t: convert_gguf(path, t)))
        return str(path)
    local = Path(ref).expanduser()
    if local.exists():
        markers = ("config.json", "adapter_config.json", NGRAM_FILE)  # a checkpoint, a LoRA reward, an n-gram one
        if not any((local / name).exists() for name in markers):
            raise UserError(f"model path {local} has no config.json: point it at a transformers checkpoint directory")
        return str(local)
    if looks_like_path(ref):
        raise UserError(f"model path {ref} does not exist: train/convert it first or fix the path")
    return ref  # a hub id: transformers fetches it (needs network or a warm HF cache)


def materialize(ref: ModelRef, cache_dir: Path) -> str:
    """Actor side: a directory on this node (or a hub id) that transformers can load."""
    if isinstance(ref, Artifact):
        return str(fetch(ref, Path(cache_dir) / "artifacts"))
    return resolve_model(ref, cache_dir)
