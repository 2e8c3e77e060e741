"""ppo.micro_batch_tokens: micro-batches by token count, pad columns left out, losses weighted by
token share: the same update as the padded one-micro-batch-per-mini-batch path, within float noise."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from rlhf_ray import algo
from rlhf_ray.actors.generator import Generator
from rlhf_ray.actors.learner import Learner
from rlhf_ray.config.load import load_config
from rlhf_ray.errors import ConfigError

BASE = ["ppo.epochs=2", "ppo.batch_size=8", "ppo.mini_batch_size=4", "generate.max_new_tokens=10"]


def test_packing_by_hand():
    lengths = torch.tensor([5, 9, 3, 9, 4, 20])
    rows = torch.tensor([0, 1, 2, 3, 4])
    # sorted by length: 2(3) 4(4) 0(5) 1(9) 3(9); budget 16: [2,4,0] = 3 x 5 = 15, then 9s: 2 x 9 = 18 > 16
    parts = algo.token_budget_batches(rows, lengths, 16)
    assert [p.tolist() for p in parts] == [[2, 4, 0], [1], [3]]
    assert [p.tolist() for p in algo.token_budget_batches(torch.tensor([5]), lengths, 8)] == [[5]]  # too long: alone
    assert sorted(torch.cat(algo.token_budget_batches(rows, lengths, 40)).tolist()) == rows.tolist()
    with pytest.raises(ValueError):
        algo.token_budget_batches(rows, lengths, 0)


@pytest.fixture(scope="module")
def mixed_rollout(tiny_lm):
    """8 samples whose responses end at different lengths (cut as an EOS would cut them)."""
    cfg = load_config("configs/smoke.yaml", BASE)
    gen = Generator(cfg, tiny_lm)
    gen.load_adapter(Learner(cfg, tiny_lm).adapter())
    prompts = ["This movie was", "The plot", "I loved it", "Awful", "A", "Two hours of", "Why", "Great cast"]
    rollout, _ = gen.generate(prompts, iteration=1)
    for row, keep in enumerate([10, 2, 7, 1, 10, 4, 3, 9]):
        rollout.response_mask[row, keep:] = 0
        rollout.response_ids[row, keep:] = gen.tokenizer.pad_token_id
    scores = torch.linspace(-1.0, 2.0, len(rollout))
    return rollout, scores


@pytest.mark.parametrize("advantage", ["gae", "grpo"])
def test_token_budget_gives_the_padded_update(tiny_lm, mixed_rollout, advantage):
    rollout, scores = mixed_rollout
    if advantage == "grpo":  # the same 8 rows read as 4 prompts x 2 samples
        rollout = replace(rollout, group_size=2)
    extra = [f"algo.advantage={advantage}", "algo.group_size=2", "ppo.batch_size=4"] if advantage == "grpo" else []
    padded = Learner(load_config("configs/smoke.yaml", BASE + extra), tiny_lm)
    packed = Learner(load_config("configs/smoke.yaml", BASE + extra + ["ppo.micro_batch_tokens=40"]), tiny_lm)
    widths = []
    inner = packed._forward
    packed._forward = lambda b, rows, **kw: (
        widths.append(packed._part(b, rows).input_ids.shape[1]) or inner(b, rows, **kw)
    )
    assert padded.trunk_depth == 0  # LoRA in every layer: no frozen trunk to reuse
    m_padded, _ = padded.learn([rollout], [scores], iteration=1)
    m_packed, _ = packed.learn([rollout], [scores], iteration=1)
    assert min(widths) < rollout.input_ids.shape[1]  # some forwards skipped pad columns
    for key in ("policy/loss", "policy/approx_kl", "policy/clipfrac", "kl/mean", "entropy/mean", "policy/grad_norm"):
        assert m_packed[key] == pytest.approx(m_padded[key], rel=1e-4, abs=1e-6), key
    a, b = padded.model.state_dict(), packed.model.state_dict()
    # Adam rescales every step, so float-noise-sized gradient differences (packed rows are summed in
    # another order) reach the weights at ~1e-6 of the ~1e-3 steps; seen up to 3.1e-6 here
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a if "lora_" in k)


def test_token_budget_refuses_grad_accum_and_data_parallel():
    with pytest.raises(ConfigError, match="ppo.grad_accum"):
        load_config("configs/smoke.yaml", ["ppo.micro_batch_tokens=64", "ppo.grad_accum=2"])
    with pytest.raises(ConfigError, match="ppo.micro_batch_tokens"):
        load_config("configs/smoke.yaml", ["ppo.micro_batch_tokens=64", "cluster.num_learners=2"])


@pytest.mark.parametrize("budget", [0, 40])
def test_the_trunk_below_the_adapter_runs_once_per_row_and_gives_the_same_update(
    tiny_lm, mixed_rollout, budget, monkeypatch
):
    """model.lora_layers=1: the layers below the adapter run once per row and iteration (learner.TrunkCache),
    the reference pass and each epoch's forward only the layer above; the update is the full forwards' one.
    With ppo.micro_batch_tokens, trimmed parts read their columns of the full-width states."""
    import rlhf_ray.actors.learner as learner_module

    rollout, scores = mixed_rollout
    argv = BASE + ["model.lora_layers=1", f"ppo.micro_batch_tokens={budget}", "algo.kl_loss_coef=0.1"]
    full, split = (Learner(load_config("configs/smoke.yaml", argv), tiny_lm) for _ in range(2))
    assert split.trunk_depth == split.model.config.num_hidden_layers - 1 > 0
    full.trunk_depth = 0  # every forward through every layer
    trunk_rows = []
    inner = learner_module.trunk_hidden
    monkeypatch.setattr(
        learner_module, "trunk_hidden", lambda m, ids, *a: trunk_rows.append(len(ids)) or inner(m, ids, *a)
    )
    ref_free = replace(rollout, ref_logprobs=None)  # the learner's own reference pass reads the trunk too
    m_full, _ = full.learn([ref_free], [scores], iteration=1)
    assert not trunk_rows
    m_split, _ = split.learn([ref_free], [scores], iteration=1)
    assert sum(trunk_rows) == len(rollout)  # each row's trunk once, for old, reference and both epochs
    for key in ("policy/loss", "policy/approx_kl", "kl/mean", "kl/loss", "entropy/mean", "value/loss"):
        assert m_split[key] == pytest.approx(m_full[key], rel=1e-4, abs=1e-6), key
    a, b = full.model.state_dict(), split.model.state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a if "lora_" in k)
