"""The memory plan of a sweep: N runs on one policy host (`rlhf-ray plan --runs N`, and DIR/plan.json
of `rlhf-ray sweep`).

One base, one dequant cache, one lean-decoder layout and one process overhead for every run
(runtime/plan.py's fused `policy` role); per run: its LoRA weights and AdamW moments (gradients
only for the run that is learning: the host frees them after each run's update), its value head,
and its rows of the KV cache (every run's batch is sampled in one call: models/mixed.py). One
reward scorer process per distinct reward config (runs with the same `reward` section share one).
Every run may have its own rank and targets: each run is counted from its own config.
Under cluster.layout=separate the learner host holds every run's learner parts and each of the
cluster.num_generators generator hosts every run's adapter weights and its share of the KV cache."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

from rlhf_ray.config.schema import Config
from rlhf_ray.runtime.plan import GIB, Plan, _layout, choose_layout, gpu_shares, make_plan

SWEEP = "sweep"


@dataclass(frozen=True)
class RunBytes:
    lora: int  # weights + 2 AdamW moments, kept between updates (plan.py's 16 B/param less the grads)
    grads: int  # its LoRA gradients, alive only while it learns
    value_head: int
    kv_cache: int  # its rows of the batched sampling call
    generator_lora: int  # its adapter's weights on each generator host (separate layout)
    generator_kv: int  # its rows on each generator host (its batch over cluster.num_generators)

    @property
    def kept(self) -> int:
        return self.lora + self.value_head + self.kv_cache


def run_bytes(cfg: Config, gpu_memory_gb: float | None = None) -> RunBytes:
    layouts = make_plan(cfg, gpu_memory_gb, choose=False).layouts
    policy, generator = layouts["fused"].roles["policy"], layouts["separate"].roles["generator"]
    return RunBytes(
        policy.lora * 3 // 4, policy.lora // 4, policy.value_head, policy.kv_cache, generator.lora, generator.kv_cache
    )


def reward_key(cfg: Config) -> str:
    return json.dumps(cfg.to_dict()["reward"], sort_keys=True, default=str)


def scorer_key(cfg: Config) -> str:
    """What makes two runs' scorers one: the same reward section and, where the reward stage trains the
    model (no reward.model, a classifier or pairwise-model source), the same run.seed it trains with."""
    sources = cfg.reward.source_list()
    trained = cfg.reward.model is None and any(s.kind in ("classifier", "model") and s.model is None for s in sources)
    return reward_key(cfg) + (f"/seed={cfg.run.seed}" if trained else "")


def sweep_plan(runs: list[Config], gpu_memory_gb: float | None = None, choose: bool = True) -> Plan:
    """The fused plan of the first run, with the `sweep` layout added: one host holding every run."""
    first = runs[0]
    plan = make_plan(first, gpu_memory_gb, choose=False)
    known: dict[int, RunBytes] = {}
    for cfg in runs:
        if id(cfg) not in known:
            known[id(cfg)] = run_bytes(cfg, gpu_memory_gb)
    scorers = len({scorer_key(cfg) for cfg in runs})
    plan.layouts[SWEEP] = _sweep_layout(plan, first, [known[id(cfg)] for cfg in runs], scorers)
    if choose:
        plan.chosen = choose_layout(plan, SWEEP, 1)
    return plan


def _sweep_layout(plan: Plan, first: Config, per_run: list[RunBytes], scorers: int):
    shares = gpu_shares(first) if plan.device == "gpu" else None
    learning = dict(
        lora=sum(r.lora for r in per_run) + max(r.grads for r in per_run),  # one run's grads at a time
        value_head=sum(r.value_head for r in per_run),
    )
    if first.cluster.layout == "separate":
        separate = plan.layouts["separate"].roles
        roles = {
            "generator": dataclasses.replace(
                separate["generator"],
                lora=sum(r.generator_lora for r in per_run),
                kv_cache=sum(r.generator_kv for r in per_run),
            ),
            "learner": dataclasses.replace(separate["learner"], **learning),
            "scorer": separate["scorer"],
        }
        counts = {"generator": first.cluster.num_generators, "learner": first.cluster.num_learners, "scorer": scorers}
        return _layout(SWEEP, roles, counts, plan.budget, shares)
    host = dataclasses.replace(
        plan.layouts["fused"].roles["policy"], **learning, kv_cache=sum(r.kv_cache for r in per_run)
    )
    return _layout(SWEEP, {"policy": host, "scorer": plan.layouts["fused"].roles["scorer"]},
                   {"policy": 1, "scorer": scorers}, plan.budget, shares)  # fmt: skip


def runs_that_fit(cfg: Config, plan: Plan, gpu_memory_gb: float | None = None) -> int:
    """How many runs of `cfg` (sharing one reward scorer) one host fits in `plan`'s budget."""
    one = run_bytes(cfg, gpu_memory_gb)
    n = 0
    while n < 4096 and _sweep_layout(plan, cfg, [one] * (n + 1), 1).fits:
        n += 1
    return n


def format_sweep(plan: Plan, cfg: Config, runs: int, gpu_memory_gb: float | None = None) -> str:
    lp = plan.layouts[SWEEP]
    one = run_bytes(cfg, gpu_memory_gb)
    bases = "one base"
    if cfg.cluster.layout == "separate":
        bases = "one base per process"
        where = (
            f"in each learner process, and {(one.generator_lora + one.generator_kv) / GIB:.4f} GiB (adapter, KV "
            f"cache) in each of the {lp.counts['generator']} generator process(es), each with its own base"
        )
    else:
        where = f"+ {one.kv_cache / GIB:.4f} GiB of KV cache while sampling, in the policy process"
    return (
        f"\n[sweep] {runs} runs on {bases}: total {lp.total / GIB:.2f} GiB "
        f"({'fits' if lp.fits else 'does NOT fit'}); per run {(one.lora + one.value_head) / GIB:.4f} GiB kept "
        f"(adapter, AdamW moments, value head) {where}; {lp.counts['scorer']} reward scorer(s) for them all; at most "
        f"{runs_that_fit(cfg, plan, gpu_memory_gb)} runs of this config fit the {plan.device} budget of "
        f"{plan.budget / GIB:.2f} GiB"
    )
