"""Recipe step 2: fold the SFT adapter into full-precision base weights and save a plain
transformers checkpoint (+ tokenizer) under run_dir/model, the base of the PPO stage.

Runs in the driver process, not in a Ray task: it is a one-off CPU/memory-bound copy of the
weights that needs no GPU, and a task would have to ship the whole merged checkpoint (hundreds of
MB to GBs, not an adapter's MBs) back through the object store to reach run_dir, while
merge.adapter is a path on this machine anyway."""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

from rlhf_ray.config.schema import Config
from rlhf_ray.errors import UserError
from rlhf_ray.models.adapter import merge_adapter
from rlhf_ray.models.assets import resolve_model
from rlhf_ray.stages.common import begin, finish
from rlhf_ray.store.checkpoint import replace_dir, temp_dir

log = logging.getLogger(__name__)


def dir_size(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())


def run(cfg: Config, run_dir: Path, resume: bool = False) -> dict:

    if cfg.merge.adapter is None:
        raise UserError(
            "config key 'merge.adapter' is not set: pass merge.adapter=RUN_DIR/adapter "
            "(the adapter directory written by `rlhf-ray sft --run-dir RUN_DIR`)"
        )
    if (done := begin(run_dir, resume)) is not None:
        return done
    start = time.perf_counter()
    base = resolve_model(cfg.model.policy, cfg.cache_dir())
    tmp = temp_dir(run_dir, ".model.tmp-")  # unique: two merges never share it (leftovers are swept)
    log.info("merging %s into %s (%s)", cfg.merge.adapter, base, cfg.merge.dtype)
    try:
        model_dir = replace_dir(merge_adapter(base, cfg.merge.adapter, tmp, cfg.merge.dtype), run_dir / "model")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already after a successful swap
    return finish(
        run_dir,
        {
            "stage": "merge",
            "model": str(model_dir),
            "base": base,
            "adapter": cfg.merge.adapter,
            "dtype": cfg.merge.dtype,
            "size_mb": round(dir_size(model_dir) / 2**20, 1),
            "wall_s": round(time.perf_counter() - start, 1),
        },
    )
