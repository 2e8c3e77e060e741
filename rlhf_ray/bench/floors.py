"""The physical floors of this machine for the two phases that carry the work, and how close we are.

- A decode step must read every weight once (a token's forward touches each matrix, and the LM head
  is a full vocab x hidden matmul): floor = the model's stored bytes / this machine's copy bandwidth.
- The learner's passes are matmuls: ~2 FLOPs per weight per token forward, ~4 with the backward to
  the activations (the frozen base needs no weight gradients; LoRA's are negligible): floor = their
  FLOPs / this machine's fp32 matmul rate.
Both rates are measured here, with the torch thread count the roles use, best of a few tries."""

from __future__ import annotations

import time

import torch

from rlhf_ray.models.policy import causal_lm_of

COPY_BYTES = 256 * 2**20  # well past the last-level cache
MATMUL_N = 2048


def _best_seconds(fn, tries: int = 5) -> float:
    fn()  # warm-up: page faults, thread pool
    best = float("inf")
    for _ in range(tries):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def machine_rates() -> dict:
    """Copy bandwidth (bytes read + written per second) and fp32 matmul rate (FLOP/s)."""
    src = torch.ones(COPY_BYTES // 4)
    dst = torch.empty_like(src)
    copy_s = _best_seconds(lambda: dst.copy_(src))
    a, b = torch.randn(MATMUL_N, MATMUL_N), torch.randn(MATMUL_N, MATMUL_N)
    matmul_s = _best_seconds(lambda: torch.mm(a, b))
    return {"copy_bytes_per_s": 2 * COPY_BYTES / copy_s, "matmul_flops_per_s": 2 * MATMUL_N**3 / matmul_s}


def matmul_weights(model) -> int:
    """Weights a token's forward multiplies by: every Linear of the base (quantized or not, the LM
    head included, tied or not), not the input embedding (a lookup) nor LoRA's few."""
    return sum(
        m.in_features * m.out_features
        for name, m in causal_lm_of(model).named_modules()
        if isinstance(m, torch.nn.Linear) and "lora_" not in name
    )


def decode_floor(model, rates: dict, step_s: float) -> dict:
    stored = causal_lm_of(model).get_memory_footprint()
    floor_s = stored / (rates["copy_bytes_per_s"] / 2)  # a step reads each stored byte once
    return {"measured_s": step_s, "floor_s": floor_s, "weight_bytes": stored, "ratio": step_s / floor_s}


def learner_floor(model, rates: dict, tokens: int, epochs: int, no_grad_passes: float, learn_s: float) -> dict:
    """tokens: real (unpadded) tokens of one iteration's batch; no_grad_passes: old (+ ref) passes."""
    weights = matmul_weights(model)
    flops = tokens * weights * (2 * no_grad_passes + 4 * epochs)
    floor_s = flops / rates["matmul_flops_per_s"]
    return {"measured_s": learn_s, "floor_s": floor_s, "flops": flops, "ratio": learn_s / floor_s}
