"""The memory plan of a sweep: N runs on one policy host (`rlhf-ray plan --runs N`, and DIR/plan.json
of `rlhf-ray sweep`).

One base, one dequant cache, one lean-decoder layout and one process overhead for every run
(runtime/plan.py's fused `policy` role); per run: its LoRA weights and AdamW moments (gradients
only for the run that is learning: the host frees them after each run's update) and its value
head, plus one reward scorer process per run. Generation runs per run (the host switches the
active adapter), so the KV cache is one run's batch, as in a single fused run. Every run may have
its own rank and targets: each run's LoRA is counted from its own config."""

from __future__ import annotations

import dataclasses

from rlhf_ray.config.schema import Config
from rlhf_ray.runtime.plan import GIB, HEADROOM, LayoutPlan, Plan, _layout, choose_layout, gpu_shares, make_plan

SWEEP = "sweep"


def run_bytes(cfg: Config) -> tuple[int, int]:
    """(LoRA bytes kept between updates: weights + 2 AdamW moments, value head bytes) of one run."""
    policy = make_plan(cfg, choose=False).layouts["fused"].roles["policy"]
    return policy.lora * 3 // 4, policy.value_head  # plan.py counts weights + grads + 2 moments: 16 B/param


def sweep_plan(runs: list[Config], gpu_memory_gb: float | None = None, choose: bool = True) -> Plan:
    """The fused plan of the first run, with the `sweep` layout added: one host holding every run."""
    first = runs[0]
    plan = make_plan(first, gpu_memory_gb, choose=False)
    fused = plan.layouts["fused"]
    one = fused.roles["policy"]
    known: dict[int, tuple[int, int]] = {}
    per_run = [known.setdefault(id(cfg), run_bytes(cfg)) if id(cfg) not in known else known[id(cfg)] for cfg in runs]
    grads = max(lora // 3 for lora, _ in per_run)  # one run's LoRA gradients at a time: the largest run's
    host = dataclasses.replace(
        one, lora=sum(lora for lora, _ in per_run) + grads, value_head=sum(v for _, v in per_run)
    )
    roles = {"policy": host, "scorer": fused.roles["scorer"]}
    shares = gpu_shares(first) if plan.device == "gpu" else None
    plan.layouts[SWEEP] = _layout(SWEEP, roles, {"policy": 1, "scorer": len(runs)}, plan.budget, shares)
    if choose:
        plan.chosen = choose_layout(plan, SWEEP, 1)
    return plan


def runs_that_fit(cfg: Config, plan: Plan) -> int:
    """How many runs of `cfg` one host (plus a scorer per run) fits in the plan's budget."""
    lp: LayoutPlan = plan.layouts[SWEEP]
    lora, head = run_bytes(cfg)
    on_device = "scorer" not in lp.on_host
    scorer = lp.roles["scorer"].total if on_device else 0
    n = lp.counts["scorer"]
    fixed = lp.total - n * (lora + head + scorer)
    per = lora + head + scorer
    room = HEADROOM * plan.budget - fixed
    return max(0, int(room // per)) if per else 0


def format_sweep(plan: Plan, cfg: Config) -> str:
    lp = plan.layouts[SWEEP]
    n = lp.counts["scorer"]
    lora, head = run_bytes(cfg)
    return (
        f"\n[sweep] {n} runs on one base: total {lp.total / GIB:.2f} GiB "
        f"({'fits' if lp.fits else 'does NOT fit'}); per run {(lora + head) / GIB:.4f} GiB (its adapter, AdamW "
        f"moments and value head, in the policy process) + one reward scorer; at most {runs_that_fit(cfg, plan)} "
        f"runs of this config fit the {plan.device} budget of {plan.budget / GIB:.2f} GiB"
    )
