"""One fused PPO iteration (GAE + value head) on a 20B-shaped model, with peak memory per phase.

Runs in ONE process without Ray (a GPU host may have no Ray): it uses the plain FusedPolicyHost.
On CUDA it caps the process at --cap-gb (torch.cuda.set_per_process_memory_fraction) and reports
peak allocated bytes per phase; on CPU it reports peak RSS per phase (VmHWM, reset between phases).
Scores are seeded random numbers: the reward model is not what this measures.

    python jobs/gpu_check.py --quant 4bit                       # 20B shape, 44 layers
    python jobs/gpu_check.py --model gpt-neox-20b-shape-4l --quant 4bit --device cpu
    python jobs/gpu_check.py --model tiny-neox-shape --device cpu   # seconds (the test)"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a plain checkout, no install

NEEDED = ["torch", "transformers", "peft", "bitsandbytes", "safetensors", "tokenizers", "yaml"]
PROMPTS = ["This movie was", "The plot of the film", "I watched it twice and", "Honestly, the acting"]


def missing_packages() -> list[str]:
    missing = []
    for name in NEEDED:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    return missing


class PhaseProbe:
    """Peak memory and wall time of each phase: CUDA peak allocated, or the process's peak RSS on CPU."""

    def __init__(self, device: str):
        self.device, self.phases = device, {}

    def _reset(self) -> None:
        import torch

        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            Path("/proc/self/clear_refs").write_text("5")  # Linux: reset VmHWM (peak RSS) to the current RSS

    def _peak(self) -> int:
        import torch

        if self.device == "cuda":
            torch.cuda.synchronize()
            return int(torch.cuda.max_memory_allocated())
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmHWM in /proc/self/status")

    def run(self, name: str, fn, *args, **kwargs):
        self._reset()
        start = time.perf_counter()
        out = fn(*args, **kwargs)
        self.phases[name] = {"peak_bytes": self._peak(), "seconds": round(time.perf_counter() - start, 2)}
        return out

    def wrap(self, name: str, fn):
        return lambda *args, **kwargs: self.run(name, fn, *args, **kwargs)


def build_config(args):
    from rlhf_ray.config.schema import load_config

    gpus = 1 if args.device == "cuda" else 0
    return load_config(
        None,
        [
            f"model.policy={args.model}",
            f"model.quant={args.quant}",
            "algo.advantage=gae",
            "cluster.layout=fused",
            f"generate.max_new_tokens={args.new_tokens}",
            f"ppo.batch_size={args.prompts}",
            f"ppo.mini_batch_size={args.prompts}",
            "ppo.epochs=1",
            f"cluster.learner_gpus={gpus}",
            f"model.gradient_checkpointing={str(args.gradient_checkpointing).lower()}",
            *args.overrides,
        ],
    )


def iteration(args) -> dict:
    import torch

    from rlhf_ray.actors.fused import FusedPolicyHost
    from rlhf_ray.models.assets import resolve_model
    from rlhf_ray.runtime.plan import policy_plan

    cfg = build_config(args)
    if args.device == "cuda":
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, args.cap_gb * 2**30 / total))
    estimate = policy_plan(cfg, on_gpu=args.device == "cuda")["policy"]  # no reward model here: none is needed
    probe = PhaseProbe(args.device)
    path = resolve_model(cfg.model.policy, cfg.cache_dir())
    host = probe.run("build", FusedPolicyHost, cfg, path)
    learner = host.learner
    learner.make_experience = probe.wrap("experience", learner.make_experience)  # learn() = experience + update
    learner.update = probe.wrap("update", learner.update)
    payload, _ = host.publish()
    host.load_adapter(payload)
    prompts = (PROMPTS * args.prompts)[: args.prompts]
    rollout, _ = probe.run("generate", host.generate, prompts, 1)
    scores = torch.randn(len(rollout), generator=torch.Generator().manual_seed(0))
    metrics, payload = host.learn([rollout], [scores], 1)
    assert host.load_adapter(payload) == (metrics["policy/version"], payload.sha256)
    new_tokens = int(rollout.response_mask.sum())
    gen_s = probe.phases["generate"]["seconds"]
    learn_tokens = int(rollout.response_mask.numel())
    return {
        "model": args.model,
        "quant": args.quant,
        "device": args.device,
        "cap_gb": args.cap_gb,
        "layers": host.learner.model.config.num_hidden_layers,
        "phases": probe.phases,
        "peak_bytes": max(p["peak_bytes"] for p in probe.phases.values()),
        "plan_policy_bytes": estimate.total,  # the planner's estimate for this process
        "plan_overhead_bytes": estimate.overhead,  # CUDA context (not in torch's allocated bytes) or runtime RSS
        "generate_tokens_per_s": round(new_tokens / max(gen_s, 1e-9), 2),
        "update_tokens_per_s": round(learn_tokens / max(probe.phases["update"]["seconds"], 1e-9), 2),
        "policy_version": metrics["policy/version"],
        "value_loss": metrics["value/loss"],
    }


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="gpt-neox-20b-shape")
    p.add_argument("--quant", default="4bit", choices=["8bit", "4bit"])
    p.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    p.add_argument("--prompts", type=int, default=2)
    p.add_argument("--new-tokens", type=int, default=16)
    p.add_argument("--cap-gb", type=float, default=24.0, help="GPU memory cap (the 24 GB card)")
    p.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--run-dir", help="append the result as one JSON line to RUN_DIR/gpu_check.jsonl")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="extra config overrides")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    missing = missing_packages()
    if missing:
        print(
            f"gpu_check: missing Python packages: {', '.join(missing)} (install them, e.g. from wheels "
            "carried with the repo: pip install --no-deps <wheel>; Ray is NOT needed)",
            file=sys.stderr,
        )
        return 2
    import torch

    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: --device cuda but torch sees no CUDA device", file=sys.stderr)
        return 2
    from rlhf_ray.errors import UserError, user_message

    try:
        result = iteration(args)
    except UserError as exc:
        print(f"gpu_check: error: {user_message(exc)}", file=sys.stderr)
        return 2
    line = json.dumps(result)
    print(line)
    if args.run_dir:
        Path(args.run_dir).mkdir(parents=True, exist_ok=True)
        with open(Path(args.run_dir) / "gpu_check.jsonl", "a") as f:
            f.write(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
