"""`rlhf-ray plan --runs N`: N adapters, optimizers, value heads and KV-cache rows on one base; a
reward scorer per distinct reward config."""

from __future__ import annotations

import json

import pytest

from rlhf_ray.cli import main
from rlhf_ray.config.load import load_config
from rlhf_ray.runtime.plan import make_plan
from rlhf_ray.runtime.sweep_plan import SWEEP, runs_that_fit, sweep_plan


def test_one_run_is_the_fused_plan_and_each_run_adds_its_adapter_moments_and_head():
    cfg = load_config("configs/gpt_neox_20b_24gb.yaml", ["algo.advantage=gae"])
    fused = make_plan(cfg, 24, choose=False).layouts["fused"]
    one = sweep_plan([cfg], 24, choose=False).layouts[SWEEP]
    assert one.roles["policy"].total == fused.roles["policy"].total
    four = sweep_plan([cfg] * 4, 24, choose=False).layouts[SWEEP]
    p1, p4 = fused.roles["policy"], four.roles["policy"]
    params = p1.lora // 16  # plan.py: LoRA weights + grads + 2 AdamW moments, 4 bytes each
    assert p4.lora == 4 * 12 * params + 4 * params  # moments and weights per run, one run's grads at a time
    assert p4.value_head == 4 * p1.value_head and p4.base == p1.base and p4.dequant == p1.dequant
    assert p4.kv_cache == 4 * p1.kv_cache  # every run's rows in one sampling call
    assert four.counts == {"policy": 1, "scorer": 1}  # the same reward config: one scorer for all
    other = load_config("configs/gpt_neox_20b_24gb.yaml", ["algo.advantage=gae", "reward.score=prob"])
    assert sweep_plan([cfg, cfg, other], 24, choose=False).layouts[SWEEP].counts["scorer"] == 2


def test_ranks_may_differ_each_run_counted_from_its_own_config():
    small = load_config("configs/gpt_neox_20b_24gb.yaml", ["model.lora_r=8", "algo.advantage=grpo"])
    big = load_config("configs/gpt_neox_20b_24gb.yaml", ["model.lora_r=32", "algo.advantage=grpo"])
    lora = sweep_plan([small, big], 24, choose=False).layouts[SWEEP].roles["policy"].lora
    s = make_plan(small, 24, choose=False).layouts["fused"].roles["policy"].lora // 16
    b = make_plan(big, 24, choose=False).layouts["fused"].roles["policy"].lora // 16
    assert b == 4 * s and lora == 12 * (s + b) + 4 * b  # one run's grads at a time: the largest run's


def test_separate_layout_each_generator_host_holds_every_runs_adapter_and_rows():
    """cluster.layout=separate: one learner host with every run's learner parts, and each generator
    host (its own base) with every run's adapter weights and its shard of every run's rows."""
    over = ["algo.advantage=gae", "cluster.layout=separate", "cluster.num_generators=2"]
    cfg = load_config("configs/gpt_neox_20b_24gb.yaml", over)
    alone = make_plan(cfg, 80, choose=False).layouts["separate"].roles
    three = sweep_plan([cfg] * 3, 80, choose=False).layouts[SWEEP]
    assert three.counts == {"generator": 2, "learner": 1, "scorer": 1}
    gen, learner = three.roles["generator"], three.roles["learner"]
    assert gen.base == alone["generator"].base and gen.lora == 3 * alone["generator"].lora
    assert gen.kv_cache == 3 * alone["generator"].kv_cache  # each run's half of its rows, on each generator
    params = alone["learner"].lora // 16
    assert learner.lora == 3 * 12 * params + 4 * params and learner.value_head == 3 * alone["learner"].value_head
    assert three.on_host == ["scorer"] and three.total == 2 * gen.total + learner.total  # the card's share


def test_plan_runs_says_how_many_fit_and_refuses_too_many(tmp_path, capsys):
    out = tmp_path / "plan.json"
    cfg = "configs/gpt_neox_20b_24gb.yaml"
    assert main(["plan", "--config", cfg, "--runs", "4", "--gpu-memory-gb", "24", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "[sweep] 4 runs on one base" in text and "at most 4 runs of this config fit" in text
    assert json.loads(out.read_text())["chosen_layout"] == SWEEP
    assert main(["plan", "--config", cfg, "--runs", "5", "--gpu-memory-gb", "24", "--out", str(out)]) == 2
    assert "the sweep layout needs" in capsys.readouterr().err
    plan = sweep_plan([load_config(cfg)], 24, choose=False)
    assert runs_that_fit(load_config(cfg), plan, 24) == 4


@pytest.mark.parametrize("n", [0, -1])
def test_plan_runs_needs_one(n, capsys, tmp_path):
    assert main(["plan", "--runs", str(n), "--out", str(tmp_path / "p.json")]) == 2


def test_runs_of_other_seeds_score_with_their_own_trained_classifier():
    """The reward stage trains the classifier per run.seed: a seed sweep needs a scorer per seed (planned and
    started), while runs that name one reward.model share it."""
    from types import SimpleNamespace

    from rlhf_ray.rewards.sources import SourceSpec
    from rlhf_ray.runtime.sweep import reward_groups
    from rlhf_ray.runtime.sweep_plan import scorer_key

    seeds = [load_config("configs/default.yaml", [f"run.seed={s}"]) for s in (0, 1, 1)]
    assert len({scorer_key(c) for c in seeds}) == 2
    named = [load_config("configs/default.yaml", [f"run.seed={s}", "reward.model=minilm-l6"]) for s in (0, 1)]
    assert len({scorer_key(c) for c in named}) == 1

    def run(cfg, model):
        return SimpleNamespace(cfg=cfg, reward=[SourceSpec("classifier", "classifier", model=model)])

    assert reward_groups([run(seeds[0], "/a"), run(seeds[1], "/b"), run(seeds[2], "/b")]) == [0, 1, 1]
    assert reward_groups([run(named[0], "minilm-l6"), run(named[1], "minilm-l6")]) == [0, 0]
