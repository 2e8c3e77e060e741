"""`rlhf-ray bench`: what distribution, the roles and quantization cost, measured in one run.

On the config's own workload (every figure is the median of `bench.repeats` timings after one
untimed warm-up):
  distributed  PPO iterations through the Ray actors vs the same role classes called in this
               process (the floor), interleaved so machine noise hits both alike; samples/s
  phases       generate / score / old+ref log-probs / update / sync of the Ray iterations
  sync         adapter bytes and seconds per iteration vs the base model's bytes
  generation   a bare `model.generate` vs the Generator role in-process vs the Generator actor
  quant        none | 8bit | 4bit side by side: memory, generation tokens/s, update time
The table is printed and written with the date, machine and versions to RUN_DIR/bench.json."""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import statistics
import time
from pathlib import Path

import ray
import torch

from rlhf_ray.actors.generator import Generator
from rlhf_ray.actors.learner import Learner
from rlhf_ray.actors.scorer import RewardScorer
from rlhf_ray.bench.floors import decode_floor, learner_floor, machine_rates
from rlhf_ray.bench.report import environment, render
from rlhf_ray.config.schema import Config
from rlhf_ray.data.prompts import prompt_stream
from rlhf_ray.models.adapter import trainable_state
from rlhf_ray.models.assets import resolve_model
from rlhf_ray.models.policy import causal_lm_of, load_tokenizer
from rlhf_ray.runtime.driver import run_iteration
from rlhf_ray.runtime.overlap import RolloutSource
from rlhf_ray.runtime.placement import attached, check_fits, role_specs
from rlhf_ray.runtime.roles import Roles
from rlhf_ray.stages.common import DONE
from rlhf_ray.stages.ppo import reward_model_path
from rlhf_ray.store import seeds
from rlhf_ray.store.checkpoint import atomic_write

log = logging.getLogger(__name__)


def median(xs: list[float]) -> float:
    return float(statistics.median(xs))


@dataclasses.dataclass
class Workload:
    cfg: Config
    policy_path: str
    reward_path: str
    prompts: list[list[str]]  # one prompt batch per iteration (warm-up first), the same for every contestant

    @property
    def iterations(self) -> int:
        return len(self.prompts)


def run(cfg: Config, run_dir: Path, resume: bool = False) -> dict:
    with attached(cfg.cluster):
        check_fits(role_specs(cfg.cluster))
        policy_path = resolve_model(cfg.model.policy, cfg.cache_dir())
        work = Workload(cfg, policy_path, reward_model_path(cfg), _prompt_batches(cfg, policy_path))
        results = {"distributed": distributed(work, run_dir)}
        results["quant"] = quant_modes(work)
    report = {**environment(cfg), "results": results}
    table = render(report)
    print(table)
    atomic_write(run_dir / "bench.json", json.dumps(report, indent=2).encode())
    atomic_write(run_dir / "bench.txt", table.encode())
    summary = {"bench": str(run_dir / "bench.json"), **results["distributed"]["headline"]}
    atomic_write(run_dir / DONE, json.dumps(summary).encode())
    return summary


def _prompt_batches(cfg: Config, policy_path: str) -> list[list[str]]:
    """The prompts the PPO job would draw (rendered texts: the bench times the policy, not the rows)."""
    stream = prompt_stream(cfg, load_tokenizer(policy_path), "train")
    return [[p.text for p in stream.next(cfg.ppo.batch_size)] for _ in range(1 + cfg.bench.repeats)]


# ----------------------------------------------------------------------------- Ray vs in-process


class InProcess:
    """The floor: the same role classes, called directly, in the order the driver calls the actors."""

    def __init__(self, work: Workload):
        cfg = work.cfg
        self.generator = Generator(cfg, work.policy_path)
        self.scorer = RewardScorer(cfg, work.reward_path)
        self.learner = Learner(cfg, work.policy_path)
        self.generator.load_adapter(self.learner.adapter())

    def iteration(self, prompts: list[str], iteration: int) -> dict:
        t0 = time.perf_counter()
        rollout, _ = self.generator.generate(prompts, iteration)
        t1 = time.perf_counter()
        scores = self.scorer.score(rollout)
        t2 = time.perf_counter()
        metrics, payload = self.learner.learn([rollout], [scores], iteration)
        t3 = time.perf_counter()
        self.generator.load_adapter(payload)
        t4 = time.perf_counter()
        return {
            **metrics,
            "time/generate_s": t1 - t0,
            "time/score_s": t2 - t1,
            "time/learn_s": t3 - t2,
            "time/sync_s": t4 - t3,
            "time/iteration_s": t4 - t0,
            "bench/tokens": int(rollout.lengths.sum()),  # real tokens the learner's passes compute
        }


class _FixedPrompts:
    """The prompt stream the RolloutSource draws from, replaying the workload's batches."""

    def __init__(self, batches: list[list[str]]):
        self.batches, self.state = batches, _Cursor()

    def next(self, n: int) -> list[str]:
        self.state.cursor += 1
        return self.batches[self.state.cursor - 1]


@dataclasses.dataclass
class _Cursor:
    epoch: int = 0
    cursor: int = 0


def distributed(work: Workload, run_dir: Path) -> dict:
    """Interleaved PPO iterations, Ray actors then in-process, on the same prompt batches."""
    cfg = work.cfg
    roles = Roles.start(cfg, work.policy_path, work.reward_path, run_dir)
    try:
        roles.sync(cfg.cluster.call_timeout_s)
        floor = InProcess(work)
        source = RolloutSource(roles.generators, _FixedPrompts(work.prompts), cfg, work.iterations)
        on_ray, local = [], []
        for it in range(1, work.iterations + 1):
            on_ray.append(run_iteration(cfg, roles, source, it)[0])
            local.append(floor.iteration(work.prompts[it - 1], it))
            log.info(
                "bench: iteration %d/%d (Ray %.1f s, in-process %.1f s)%s",
                it,
                work.iterations,
                on_ray[-1]["time/iteration_s"],
                local[-1]["time/iteration_s"],
                " (warm-up)" if it == 1 else "",
            )
        on_ray, local = on_ray[1:], local[1:]  # the first iteration is the warm-up
        generation = generation_speed(work, floor, roles)
        sync = sync_cost(floor.learner, on_ray)
        hardware = hardware_floors(cfg, floor.learner.model, generation, local)
    finally:
        roles.stop()
    floor_dequant, floor_decoder = floor.learner.dequant, floor.generator.decoder
    del floor
    gc.collect()
    ray_s = median([m["time/iteration_s"] for m in on_ray])
    local_s = median([m["time/iteration_s"] for m in local])
    samples = cfg.ppo.batch_size * cfg.samples_per_prompt()
    slower = min(generation["role_over_bare"], generation["actor_over_bare"])
    headline = {
        "ray_over_inprocess": ray_s / local_s,
        "generator_over_bare": slower,
        "samples_per_s": samples / ray_s,
        "reference_logprobs": cfg.reference_logprobs_on(),  # the automatic choices this run made
        "dequant_cache": floor_dequant,
        "decoder": floor_decoder,
    }
    return {
        "samples_per_iteration": samples,
        "ray_iteration_s": ray_s,
        "inprocess_iteration_s": local_s,
        "ray_iterations": on_ray,
        "inprocess_iterations": local,
        "phases": phases(on_ray),
        "inprocess_phases": phases(local),
        "generation": generation,
        "sync": sync,
        "floors": hardware,
        "headline": headline,
    }


def phases(rows: list[dict]) -> dict:
    """Median seconds per phase and their share of the median iteration."""
    keys = {
        "generate": "time/generate_s",
        "score": "time/score_s",
        "old+ref log-probs": "time/experience_s",
        "update": "time/update_s",
        "sync": "time/sync_s",
    }
    total = median([r["time/iteration_s"] for r in rows])
    out = {name: median([r[key] for r in rows]) for name, key in keys.items()}
    out["other (calls, transfers)"] = max(total - sum(out.values()), 0.0)
    return {"iteration_s": total, "seconds": out, "percent": {k: 100 * v / total for k, v in out.items()}}


def sync_cost(learner: Learner, rows: list[dict]) -> dict:
    adapter = sum(t.numel() * t.element_size() for t in trainable_state(learner.model, learner.value_head).values())
    base = causal_lm_of(learner.model).get_memory_footprint() - adapter
    sent = median([r["sync/bytes"] for r in rows])
    return {
        "bytes_per_iteration": sent,
        "adapter_tensor_bytes": adapter,
        "base_model_bytes": base,
        "seconds_per_iteration": median([r["time/sync_s"] for r in rows]),
        "sent_over_base": sent / base,
    }


def hardware_floors(cfg: Config, model, generation: dict, local: list[dict]) -> dict:
    """The decode step and the learner's passes against this machine's measured floors."""
    rates = machine_rates()
    step_s = generation["role"]["seconds"] / cfg.generate.max_new_tokens  # the Generator's own call
    rows = cfg.ppo.batch_size * cfg.samples_per_prompt()
    first = (cfg.ppo.mini_batch_size // cfg.ppo.grad_accum) / rows  # rows whose old pass is the first step's
    no_grad = 1 - first + (0 if cfg.reference_logprobs_on() else 1)
    tokens = median([m["bench/tokens"] for m in local])
    learn_s = median([m["time/learn_s"] for m in local])
    return {
        "rates": rates,
        "decode": decode_floor(model, rates, step_s),
        "learner": learner_floor(model, rates, int(tokens), cfg.ppo.epochs, no_grad, learn_s),
    }


# ----------------------------------------------------------------------------- generation


def _bare_generate(generator: Generator, prompts: list[str], seed: int) -> tuple[float, int]:
    """model.generate alone, on the batch and sampling settings the Generator uses; (seconds, tokens)."""
    g, tok = generator.cfg.generate, generator.tokenizer
    group = generator.cfg.samples_per_prompt()
    tok.padding_side = "left"
    enc = tok(
        [p for p in prompts for _ in range(group)], return_tensors="pt", padding=True, add_special_tokens=False
    ).to(generator.device)
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    with torch.no_grad():
        out = generator.model.generate(
            **enc,
            do_sample=True,
            temperature=g.temperature,
            top_k=g.top_k or None,
            top_p=g.top_p,
            max_new_tokens=g.max_new_tokens,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
        )
    return time.perf_counter() - t0, out[:, enc["input_ids"].shape[1] :].numel()


def _role_generate(generator: Generator, prompts: list[str], iteration: int) -> tuple[float, int, object]:
    t0 = time.perf_counter()
    rollout, _ = generator.generate(prompts, iteration)
    return time.perf_counter() - t0, rollout.response_ids.numel(), rollout


def _actor_generate(actor, prompts: list[str], iteration: int) -> tuple[float, int]:
    t0 = time.perf_counter()
    rollout_ref, info_ref = actor.generate.options(num_returns=2).remote(prompts, iteration, False)
    ray.get(info_ref)
    seconds = time.perf_counter() - t0
    return seconds, ray.get(rollout_ref).response_ids.numel()


def generation_speed(work: Workload, floor: InProcess, roles: Roles) -> dict:
    """Tokens/s of the same batch (same seed, so the same samples) three ways, interleaved."""
    cfg, prompts = work.cfg, work.prompts[0]
    it = work.iterations + 1  # an iteration number not used above: fresh seed, identical for all three
    seed = seeds.sampling(cfg.run.seed, it, 0)  # the Generator's own seed for this iteration
    timings = {"bare": [], "role": [], "actor": []}
    log.info("bench: generation speed, bare generate vs Generator vs actor (%d rounds)", 1 + cfg.bench.repeats)
    for _ in range(1 + cfg.bench.repeats):
        timings["bare"].append(_bare_generate(floor.generator, prompts, seed))
        timings["role"].append(_role_generate(floor.generator, prompts, it)[:2])
        timings["actor"].append(_actor_generate(roles.generators[0], prompts, it))
    out = {}
    for name, rows in timings.items():
        seconds = median([s for s, _ in rows[1:]])
        out[name] = {"seconds": seconds, "tokens": rows[-1][1], "tokens_per_s": rows[-1][1] / seconds}
    out["role_over_bare"] = out["role"]["tokens_per_s"] / out["bare"]["tokens_per_s"]
    out["actor_over_bare"] = out["actor"]["tokens_per_s"] / out["bare"]["tokens_per_s"]
    return out


# ----------------------------------------------------------------------------- quantization modes


def quant_modes(work: Workload) -> dict:
    """Per mode, in-process roles: model memory, generation tokens/s, old+ref and update seconds."""
    out = {}
    scorer = RewardScorer(work.cfg, work.reward_path)
    for mode in work.cfg.bench.quant_modes:
        log.info("bench: quantization %s (%d iterations in-process)", mode, work.iterations)
        cfg = dataclasses.replace(work.cfg, model=dataclasses.replace(work.cfg.model, quant=mode))
        generator, learner = Generator(cfg, work.policy_path), Learner(cfg, work.policy_path)
        generator.load_adapter(learner.adapter())
        gen, exp, upd = [], [], []
        for it in range(1, work.iterations + 1):
            seconds, tokens, rollout = _role_generate(generator, work.prompts[it - 1], it)
            metrics, payload = learner.learn([rollout], [scorer.score(rollout)], it)
            generator.load_adapter(payload)
            gen.append(tokens / seconds)
            exp.append(metrics["time/experience_s"])
            upd.append(metrics["time/update_s"])
        out[mode] = {
            "memory_bytes": causal_lm_of(generator.model).get_memory_footprint(),
            "generate_tokens_per_s": median(gen[1:]),
            "experience_s": median(exp[1:]),
            "update_s": median(upd[1:]),
        }
        del generator, learner
        gc.collect()
    return out
