"""What a role process spends before it computes: the imports a role's class brings (torch), then the
model load (transformers' modeling code, peft, bitsandbytes, the 8-bit tiny Llama with its LoRA), in
one fresh process, with the garbage collector as a Ray worker of ours runs it (`--freeze`: the
objects imported before the load are frozen, rlhf_ray.process.freeze_startup) or as Python's defaults
leave it. Prints the process's CPU seconds; farm-bench pairs the two:

    farm-bench -n 8 --timeout 300 --vs '.venv/bin/python benchmarks/role_start.py' \\
        -- .venv/bin/python benchmarks/role_start.py --freeze"""

from __future__ import annotations

import argparse
import resource
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--freeze", action="store_true", help="freeze what is imported before the model load")
    args = ap.parse_args()
    t0 = time.perf_counter()
    from rlhf_ray import process

    process.set_up_worker() if args.freeze else process.set_up_process()
    import rlhf_ray.actors.generator  # noqa: F401  (what unpickling a role imports)
    from rlhf_ray.actors.common import init_process, load_policy
    from rlhf_ray.config.schema import Config
    from rlhf_ray.models.assets import resolve_model

    cfg = Config()
    cfg.model.quant, cfg.model.lora_r, cfg.model.lora_alpha = "8bit", 4, 8
    path = resolve_model("tiny-random-llama", cfg.cache_dir())
    init_process(cfg)
    load_policy(cfg, path, "cpu")
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(f"freeze={args.freeze} wall {time.perf_counter() - t0:.2f} s, cpu {usage.ru_utime + usage.ru_stime:.2f} s")


if __name__ == "__main__":
    main()
