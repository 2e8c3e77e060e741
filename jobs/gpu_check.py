"""One fused PPO iteration (GAE + value head) with memory per phase, checked against the planner.

Runs in ONE process without Ray (a lent GPU machine has no Ray, and the Ray wheel cannot travel with
the repo): it uses the plain FusedPolicyHost. On CUDA it reports, per phase, torch's peak allocated
and reserved bytes; the CUDA context (device memory in use after CUDA starts and before any tensor,
from nvidia-smi and torch.cuda.mem_get_info); the memory outside torch's allocator at the end; and
the verdict for a 22.3 GiB card (what A10G and L4 "24 GB" cards expose) and a 24 GiB card, measured
and as the planner predicts. The allocator is capped at --cap-gb minus that outside memory. On CPU
it reports peak RSS per phase (VmHWM, reset between phases). Scores are seeded random numbers: the
reward model is not what this measures. It never falls back to the CPU when CUDA is asked for.

    python3 jobs/gpu_check.py --quant 4bit                       # 20B shape, 44 layers, on CUDA
    python3 jobs/gpu_check.py --model smollm2-135m-shape --quant 8bit --prompts 16 --new-tokens 64
    python3 jobs/gpu_check.py --model tiny-neox-shape --device cpu   # seconds (the test)"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a plain checkout, no install

# What the fused path imports (pyarrow: the learner's data path; accelerate: transformers' quantized loading).
NEEDED = ["torch", "transformers", "peft", "accelerate", "bitsandbytes", "safetensors", "tokenizers", "yaml", "pyarrow"]
PROMPTS = ["This movie was", "The plot of the film", "I watched it twice and", "Honestly, the acting"]
GIB = 2**30
CARDS_GIB = {"22.3": 22.3, "24": 24.0}  # usable memory of "24 GB" cards (A10G, L4) and a full 24 GiB


def missing_packages() -> list[str]:
    """'name' for a package not installed, 'name (first line of the error)' for one that fails to import."""
    import logging

    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # its import-time notes would bury our one line
    missing = []
    for name in NEEDED:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            missing.append(name if exc.name in (name, None) else f"{name} (needs {exc.name})")
        except ImportError as exc:  # e.g. transformers' own version check of its dependencies
            missing.append(f"{name} ({str(exc).strip().splitlines()[0][:160]})")
    return missing


def smi_used_bytes() -> int | None:
    """Device memory in use on GPU 0 as nvidia-smi sees it (all processes); None without nvidia-smi."""
    if shutil.which("nvidia-smi") is None:
        return None
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0] or "0"
    out = subprocess.run(
        ["nvidia-smi", "-i", visible, "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return int(out.stdout.strip().splitlines()[0]) * 2**20 if out.returncode == 0 and out.stdout.strip() else None


class PhaseProbe:
    """Peak memory and wall time of each phase: CUDA peak allocated and reserved, or peak RSS on CPU."""

    def __init__(self, device: str):
        self.device, self.phases, self.current = device, {}, None

    def _reset(self) -> None:
        import torch

        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            Path("/proc/self/clear_refs").write_text("5")  # Linux: reset VmHWM (peak RSS) to the current RSS

    def _peaks(self) -> dict:
        import torch

        if self.device == "cuda":
            torch.cuda.synchronize()
            allocated, reserved = int(torch.cuda.max_memory_allocated()), int(torch.cuda.max_memory_reserved())
            return {"peak_bytes": allocated, "peak_reserved_bytes": reserved}
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return {"peak_bytes": int(line.split()[1]) * 1024}
        raise RuntimeError("no VmHWM in /proc/self/status")

    def run(self, name: str, fn, *args, **kwargs):
        self._reset()
        self.current = name
        start = time.perf_counter()
        out = fn(*args, **kwargs)
        self.phases[name] = {**self._peaks(), "seconds": round(time.perf_counter() - start, 2)}
        self.current = None
        return out

    def wrap(self, name: str, fn):
        return lambda *args, **kwargs: self.run(name, fn, *args, **kwargs)


class CudaMemory:
    """The CUDA context and the memory outside torch's allocator, from device-wide readings."""

    def __init__(self, before: int | None):
        """before: nvidia-smi's reading when this process started, before anything could start CUDA
        (importing bitsandbytes queries the device and so creates the context)."""
        import torch

        self.before = before
        torch.cuda.init()
        free, self.total = torch.cuda.mem_get_info()
        after = smi_used_bytes()
        used_now = self.total - free
        if self.before is not None and after is not None:
            self.context, self.method = after - self.before, "nvidia-smi before/after CUDA init"
        else:  # no nvidia-smi: the whole device's use, which on a lent machine is this process alone
            self.context, self.method, self.before = used_now, "torch.cuda.mem_get_info after CUDA init", 0
        self.others = used_now - self.context  # what other processes held when we started

    def outside_allocator(self) -> int:
        """Device memory this process holds outside torch's caching allocator now (context, cuBLAS, ...)."""
        import torch

        free, _ = torch.cuda.mem_get_info()
        return max(0, self.total - free - self.others - int(torch.cuda.memory_reserved()))

    def cap(self, cap_gb: float) -> float:
        """Cap torch's allocator so allocator + context stay within cap_gb; returns the fraction set."""
        import torch

        fraction = max(0.01, min(1.0, (cap_gb * GIB - self.context) / self.total))
        torch.cuda.set_per_process_memory_fraction(fraction)
        return fraction


def build_config(args):
    from rlhf_ray.config.load import load_config

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


def verdicts(cfg, probe: PhaseProbe, outside: int, oom: bool) -> dict:
    """Per card: the measured need (peak reserved + memory outside the allocator) and the planner's."""
    from rlhf_ray.runtime.plan import HEADROOM, policy_plan

    planned = policy_plan(cfg, on_gpu=True)["policy"].total
    measured = max(p["peak_reserved_bytes"] for p in probe.phases.values()) + outside if probe.phases else None
    out = {}
    for name, gib in CARDS_GIB.items():
        budget = gib * GIB
        fits = (not oom) and measured is not None and measured <= budget
        plan_fits = planned <= HEADROOM * budget
        out[name] = {
            "measured_need_gib": None if measured is None else round(measured / GIB, 3),
            "measured_fits": fits,
            "plan_gib": round(planned / GIB, 3),
            "plan_fits": plan_fits,
            "agree": fits == plan_fits,
        }
    return out


def iteration(args) -> dict:
    import torch

    from rlhf_ray.actors.fused import FusedPolicyHost
    from rlhf_ray.models.assets import resolve_model
    from rlhf_ray.runtime.plan import policy_plan

    cfg = build_config(args)
    cuda = CudaMemory(args.smi_before) if args.device == "cuda" else None
    fraction = cuda.cap(args.cap_gb) if cuda else None
    estimate = policy_plan(cfg, on_gpu=args.device == "cuda")["policy"]  # no reward model here: none is needed
    probe = PhaseProbe(args.device)
    result: dict = {"model": args.model, "quant": args.quant, "device": args.device, "label": args.label}
    oom = None
    try:
        _fused_iteration(cfg, args, probe, resolve_model(cfg.model.policy, cfg.cache_dir()), result, FusedPolicyHost)
    except torch.cuda.OutOfMemoryError as exc:
        oom = {"phase": probe.current, "error": str(exc).splitlines()[0][:300]}
    result.update(
        {
            "cap_gb": args.cap_gb,
            "phases": probe.phases,
            "peak_bytes": max((p["peak_bytes"] for p in probe.phases.values()), default=0),
            "plan_policy_bytes": estimate.total,  # the planner's estimate for this process
            "plan_overhead_bytes": estimate.overhead,  # CUDA context (not in torch's allocated bytes) or runtime RSS
            "oom": oom,
        }
    )
    if cuda is not None:
        outside = max(cuda.outside_allocator(), cuda.context)
        result.update(
            {
                "gpu": torch.cuda.get_device_name(0),
                "gpu_total_bytes": cuda.total,
                "allocator_fraction": round(fraction, 4),
                "cuda_context_bytes": cuda.context,
                "cuda_context_method": cuda.method,
                "outside_allocator_bytes": outside,
                "peak_reserved_bytes": max((p["peak_reserved_bytes"] for p in probe.phases.values()), default=0),
                "cards": verdicts(cfg, probe, outside, oom is not None),
                "torch": torch.__version__,
            }
        )
    return result


def _fused_iteration(cfg, args, probe: PhaseProbe, path, result: dict, host_cls) -> None:
    import torch

    host = probe.run("build", host_cls, cfg, path)
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
    learn_tokens = int(rollout.response_mask.numel())
    result.update(
        {
            "layers": learner.model.config.num_hidden_layers,
            "dtype": str(learner.model.get_input_embeddings().weight.dtype).replace("torch.", ""),
            "generated_tokens": new_tokens,
            "generate_tokens_per_s": round(new_tokens / max(probe.phases["generate"]["seconds"], 1e-9), 2),
            "update_tokens_per_s": round(learn_tokens / max(probe.phases["update"]["seconds"], 1e-9), 2),
            "policy_version": metrics["policy/version"],
            "value_loss": metrics["value/loss"],
        }
    )


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="gpt-neox-20b-shape")
    p.add_argument("--quant", default="4bit", choices=["8bit", "4bit"])
    p.add_argument(
        "--device", default="auto", choices=["auto", "cuda", "cpu"], help="auto: CUDA, or refuse (never the CPU)"
    )
    p.add_argument("--prompts", type=int, default=2)
    p.add_argument("--new-tokens", type=int, default=16)
    p.add_argument("--cap-gb", type=float, default=24.0, help="GPU memory cap, context included (the 24 GB card)")
    p.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--label", default="", help="a name for this run in the output")
    p.add_argument("--run-dir", help="append the result as one JSON line to RUN_DIR/gpu_check.jsonl")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="extra config overrides")
    return p.parse_args(argv)


def fail(message: str) -> int:
    print(f"gpu_check: {message}", file=sys.stderr)
    return 2


def main(argv=None) -> int:
    args = parse(argv)
    args.smi_before = smi_used_bytes() if args.device != "cpu" else None  # before any import can start CUDA
    missing = missing_packages()
    if missing:
        return fail(
            f"missing Python packages: {', '.join(missing)} (carry them as wheels: `make gpu-wheels` on a machine "
            "with pip, then bash jobs/gpu_check.sh installs gpu-wheels/ offline; Ray is NOT needed)"
        )
    import torch

    if args.device in ("auto", "cuda") and not torch.cuda.is_available():
        return fail(
            f"--device {args.device} but torch {torch.__version__} sees no CUDA device: this check measures a GPU "
            "and never falls back to the CPU (pass --device cpu to run it there on purpose; the 20B shape takes hours)"
        )
    if args.device == "auto":
        args.device = "cuda"
    from rlhf_ray.errors import UserError, user_message

    try:
        result = iteration(args)
    except UserError as exc:
        return fail(f"error: {user_message(exc)}")
    line = json.dumps(result)
    print(line)
    if args.run_dir:
        Path(args.run_dir).mkdir(parents=True, exist_ok=True)
        with open(Path(args.run_dir) / "gpu_check.jsonl", "a") as f:
            f.write(line + "\n")
    return 1 if result["oom"] else 0


if __name__ == "__main__":
    sys.exit(main())
