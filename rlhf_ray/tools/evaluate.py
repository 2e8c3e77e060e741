"""`rlhf-ray eval RUN_DIR`: the trained policy against its reference on held-out prompts.

Held-out prompts (by default the rows of data.dataset that PPO never draws: openings of test-split
reviews for IMDB; or eval.dataset), rendered as in training, are continued by the reference
(adapter disabled, which is also the policy before its first update) and by the trained policy,
with the run's sampling settings; the run's reward sources score both (each source's mean is
reported too), and so does each of eval.judges: scorers never trained against, reported beside the
reward (mean and positive rate) so a policy that learned what its reward model likes rather than
the task shows up as a gap. Runs in-process: one policy, the reward sources and the judges, no Ray."""

from __future__ import annotations

import contextlib
import json
import logging
import math
from collections import Counter
from pathlib import Path

from rlhf_ray.actors.scorer import RewardScorer
from rlhf_ray.batch import STOP_REASONS, Prompt
from rlhf_ray.config.schema import Config
from rlhf_ray.config.sources import score_threshold
from rlhf_ray.data.prompts import prompt_stream, rollout_rows
from rlhf_ray.envs.episodes import turn_of
from rlhf_ray.envs.runner import EnvRunner, env_spec
from rlhf_ray.models.dequant import dequant_enabled, dequantized_int8
from rlhf_ray.models.forward import response_stats
from rlhf_ray.models.generate import sample
from rlhf_ray.models.policy import reference_mode, role_device
from rlhf_ray.rewards.arithmetic import EXACT_ANSWER
from rlhf_ray.rewards.base import RewardBatch
from rlhf_ray.rewards.sources import RewardSources, check_judges, check_sources, judge_specs
from rlhf_ray.runtime.metrics import sample_scores
from rlhf_ray.stages.ppo import reward_sources
from rlhf_ray.store import seeds
from rlhf_ray.store.checkpoint import atomic_write
from rlhf_ray.tools.runs import find_adapter, load_trained_policy, run_config

log = logging.getLogger(__name__)

ROWS = [
    ("reward/mean", "mean reward"),
    ("reward/positive_rate", "positive rate"),
    ("kl/to_reference", "KL to reference (nats/seq)"),
    ("response/length_mean", "response length (tokens)"),
    ("response/distinct_1", "distinct-1"),
    ("response/distinct_2", "distinct-2"),
]


def add_arguments(parser) -> None:
    parser.add_argument(
        "run", metavar="RUN_DIR", help="PPO run directory (latest checkpoint) or a checkpoint directory"
    )
    parser.add_argument("--config", help="YAML config (default: the run's config.yaml)")
    parser.add_argument("--out", help="output directory (default: the run directory)")
    parser.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="dotted config overrides, e.g. eval.num_prompts=64"
    )


def main(args) -> dict:
    adapter = find_adapter(args.run)
    cfg = run_config(adapter.run_dir, args.config, args.overrides)
    out = Path(args.out or adapter.run_dir or args.run)
    result = evaluate(cfg, adapter, out)
    print(format_table(result))
    return {"eval": str(out / "eval.json"), "policy": result["policy"], "reference": result["reference"]}


def heldout_prompts(cfg: Config, tokenizer) -> list[Prompt]:
    """eval.dataset whole, else data.dataset's rows held out from PPO; rendered exactly as the PPO driver
    renders them (same columns, chat template, length limits and seeded openings)."""
    stream = prompt_stream(cfg, tokenizer, "heldout")
    return stream.next(min(cfg.eval.num_prompts, len(stream)))


def distinct_n(texts: list[str], n: int) -> float:
    """Unique word n-grams / all word n-grams over every response (Li et al. 2016)."""
    grams: Counter = Counter()
    for text in texts:
        words = text.lower().split()
        grams.update(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
    total = sum(grams.values())
    return len(grams) / total if total else 0.0


def _sample_and_score(
    cfg: Config,
    model,
    tokenizer,
    scorer,
    prompts: list[Prompt],
    reference: bool,
    judges: RewardSources | None = None,
    env: EnvRunner | None = None,
) -> dict:
    """Responses, scores, judges' values (`judge/<name>`, None where a judge returned None) and per-sequence
    KL to the reference (k1, summed over tokens, own samples)."""
    import torch

    g, rows = cfg.generate, {"prompt": [], "response": [], "score": [], "kl": [], "length": []}
    for start in range(0, len(prompts), cfg.eval.batch_size):
        part = prompts[start : start + cfg.eval.batch_size]
        seed = seeds.eval_sampling(cfg.run.seed, start)
        with torch.no_grad(), reference_mode(model) if reference else contextlib.nullcontext():
            rollout = _draw(cfg, model, tokenizer, part, seed, start, env)
        rollout.raw_prompts, rollout.columns = rollout_rows(part, 1)  # as a generator fills them, for the scorer
        mask = rollout.loss_mask.float()  # the policy's own tokens (multi-turn: not the observations)
        kl = torch.zeros(len(rollout))
        if not reference:
            with torch.no_grad():
                args = (model, rollout.input_ids, rollout.attention_mask, rollout.prompt_ids.shape[1])
                logp = response_stats(*args, chunk=cfg.model.logprob_chunk, temperature=g.temperature).logprobs
                with reference_mode(model):
                    ref = response_stats(*args, chunk=cfg.model.logprob_chunk, temperature=g.temperature).logprobs
            kl = ((logp - ref) * mask).sum(1)
        rows["prompt"] += rollout.prompts
        rows["response"] += rollout.responses
        combined, per_source = sample_scores([scorer.score(rollout)])  # None: no (or this) source applied
        rows["score"] += combined
        for source, values in per_source.items():
            rows.setdefault(f"score/{source}", []).extend(values)
        if judges is not None:
            for judge, values in judges.values(RewardBatch.of(rollout)).items():
                rows.setdefault(f"judge/{judge}", []).extend(None if math.isnan(v) else v for v in values.tolist())
        rows["kl"] += kl.tolist()
        rows["length"] += mask.sum(1).tolist()
        for e in rollout.episodes or []:  # multi-turn: how each held-out episode went
            for key, value in (("turns", e.turns), ("tool_calls", e.tool_calls), ("stop", e.stop),
                               ("env_reward", e.reward)):  # fmt: skip
                rows.setdefault(key, []).append(value)
    return rows


def _draw(cfg: Config, model, tokenizer, part: list[Prompt], seed: int, start: int, env: EnvRunner | None):
    """One response per prompt, or with environments one episode per prompt (reset from a seed of its
    place in the held-out set: the reference and the policy play the same games)."""
    g = cfg.generate
    if env is None:
        return sample(
            model, tokenizer, [p.text for p in part], max_new_tokens=g.max_new_tokens, temperature=g.temperature,
            seed=seed,
        )  # fmt: skip

    def sample_turn(contexts: list[list[int]], max_new_tokens: int, turn: int):
        lm_seed = seeds.turn_sampling(seed, turn)
        return turn_of(sample(model, tokenizer, contexts, max_new_tokens=max_new_tokens, temperature=g.temperature,
                              seed=lm_seed))  # fmt: skip

    starts = [seeds.eval_sampling(cfg.run.seed, start + j) for j in range(len(part))]
    return env.run(part, 1, starts, sample_turn, policy_version=0, temperature=g.temperature, with_ref=False)


def summarize(rows: dict, score_kind: str, judge_thresholds: dict[str, float] | None = None) -> dict:
    """The eval figures of one model's rows; each judge's (`judge/<name>` rows) mean and positive rate (a
    value above its entry in `judge_thresholds`, default 0) over the samples it returned a value for."""
    # positive: a probability of 'positive' over 0.5 (its log over log 0.5), a logit margin over 0
    threshold = score_threshold(score_kind)

    def mean(values) -> float:
        return sum(float(v) for v in values) / len(values)

    scored = [s for s in rows["score"] if s is not None]  # the samples some reward source applied to
    out = {
        "reward/mean": mean(scored) if scored else None,
        "reward/positive_rate": mean([s > threshold for s in scored]) if scored else None,
        "reward/none_frac": 1 - len(scored) / len(rows["score"]),
        "kl/to_reference": mean(rows["kl"]),
        "response/length_mean": mean(rows["length"]),
        "response/distinct_1": distinct_n(rows["response"], 1),
        "response/distinct_2": distinct_n(rows["response"], 2),
    }
    for key in (k for k in rows if k.startswith("score/")):  # each source over the samples it applied to
        values = [v for v in rows[key] if v is not None]
        out[f"reward/{key.removeprefix('score/')}/mean"] = mean(values) if values else None
    if "turns" in rows:  # multi-turn episodes
        n = len(rows["turns"])
        out["env/turns_mean"] = mean(rows["turns"])
        out["env/tool_calls_mean"] = mean(rows["tool_calls"])
        out.update({f"env/stop/{r}": sum(s == r for s in rows["stop"]) / n for r in STOP_REASONS})
        rewarded = [r for r in rows["env_reward"] if r is not None]
        out["env/reward_mean"] = mean(rewarded) if rewarded else None
    for key in (k for k in rows if k.startswith("judge/")):
        name, values = key.removeprefix("judge/"), [v for v in rows[key] if v is not None]
        cut = (judge_thresholds or {}).get(name, 0.0)
        out[f"judge/{name}/mean"] = mean(values) if values else None
        out[f"judge/{name}/positive_rate"] = mean([v > cut for v in values]) if values else None
    return out


def evaluate(cfg: Config, adapter, out: Path) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq

    check_sources(cfg)  # a reward function's file and name, before any model loads
    check_judges(cfg)
    model, tokenizer = load_trained_policy(cfg, adapter)
    specs, _ = reward_sources(cfg, publish=False)  # local paths: this process scores
    scorer = RewardScorer(cfg, specs)
    judges = RewardSources(judge_specs(cfg), cfg, role_device(cfg.cluster.scorer_gpus)) if cfg.eval.judges else None
    thresholds = {j.resolved_name(): j.positive_threshold(cfg.reward.score) for j in cfg.eval.judges}
    prompts = heldout_prompts(cfg, tokenizer)
    spec = env_spec(cfg)  # multi-turn: held-out episodes against the run's environments
    env = EnvRunner(spec, cfg, tokenizer) if spec is not None else None
    log.info("eval: %d held-out prompts, adapter %s", len(prompts), adapter.path)
    tables, result = (
        [],
        {
            "adapter": str(adapter.path),
            "num_prompts": len(prompts),
            "generate": cfg.to_dict()["generate"],
            "reward_score": cfg.reward.score,
            "reward_sources": [
                {"name": x.name, "kind": x.kind, "weight": x.weight, "function": x.function and x.function.spec}
                for x in specs
            ],
            # scored beside the reward, never trained against; `threshold`: above it a value counts as positive
            "judges": [
                {"name": j.resolved_name(), "kind": j.kind, "threshold": thresholds[j.resolved_name()]}
                | {k: getattr(j, k) for k in ("model", "function", "url") if getattr(j, k) is not None}
                for j in cfg.eval.judges
            ],
        },
    )
    # a task with checkable answers: the exact-answer source's mean is the held-out accuracy
    exact = next((x.name for x in specs if x.function is not None and x.function.spec == EXACT_ANSWER), None)
    for name in ("reference", "policy"):
        with dequantized_int8(model, dequant_enabled(cfg.model.dequant_cache, model)):  # bit-identical, faster
            rows = _sample_and_score(cfg, model, tokenizer, scorer, prompts, name == "reference", judges, env)
        result[name] = summarize(rows, cfg.reward.score, thresholds)
        if exact is not None:
            result[name]["accuracy"] = result[name][f"reward/{exact}/mean"]
        tables.append(pa.table({"model": [name] * len(prompts), **rows}))
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.concat_tables(tables), out / "eval_responses.parquet")
    atomic_write(out / "eval.json", json.dumps(result, indent=2).encode())
    return result


def format_table(result: dict) -> str:
    """A markdown table (reads fine in a terminal too)."""
    ref, pol = result["reference"], result["policy"]
    # each reward source's own mean when there are several (one source's mean is the reward's)
    sources = [k for k in pol if k.startswith("reward/") and k.endswith("/mean") and k != "reward/mean"]
    rows = ROWS[:1] + [(k, f"mean reward: {k[len('reward/') : -len('/mean')]}") for k in sources if len(sources) > 1]
    rows += ROWS[1:2] + _judge_rows(result) + ROWS[2:]  # the judges beside the reward's positive rate
    if "accuracy" in pol:
        rows.insert(0, ("accuracy", "accuracy (exact answer)"))
    if ref.get("reward/none_frac") or pol.get("reward/none_frac"):
        rows.append(("reward/none_frac", "no reward source applied"))
    if "env/turns_mean" in pol:  # multi-turn episodes: the environment's reward, turns, tools, how they ended
        if ref.get("env/reward_mean") is not None or pol.get("env/reward_mean") is not None:
            rows.append(("env/reward_mean", "environment reward (mean)"))
        rows += [("env/turns_mean", "turns per episode"), ("env/tool_calls_mean", "tool calls per episode")]
        rows += [(f"env/stop/{r}", f"episodes ended by {r}") for r in STOP_REASONS if ref.get(f"env/stop/{r}")
                 or pol.get(f"env/stop/{r}")]  # fmt: skip
    lines = ["| metric | reference | policy |", "|---|---|---|"]
    for key, label in rows:
        lines.append(f"| {label} | {_figure(ref.get(key))} | {_figure(pol.get(key))} |")
    return "\n".join(lines)


def _judge_rows(result: dict) -> list[tuple[str, str]]:
    """Each judge's mean and positive rate (with its threshold when eval.json records it)."""
    cuts = {j["name"]: j["threshold"] for j in result.get("judges", [])}
    rows = []
    for key in (k for k in result["policy"] if k.startswith("judge/") and k.endswith("/mean")):
        judge = key[len("judge/") : -len("/mean")]
        cut = f" (> {cuts[judge]:g})" if judge in cuts else ""
        rows += [(key, f"judge {judge}: mean"), (f"judge/{judge}/positive_rate", f"judge {judge}: positive rate{cut}")]
    return rows


def _figure(value) -> str:
    return "–" if value is None else f"{value:.3f}"
