"""The multi-run policy host as a plain class (no Ray): N runs, N adapters, one quantized base."""

from __future__ import annotations

import pytest
import torch

from rlhf_ray.actors.fused import FusedPolicyHost
from rlhf_ray.actors.multirun import MultiRunPolicyHost
from rlhf_ray.actors.scorer import RewardScorer
from rlhf_ray.config.load import load_config

PROMPTS = ["This movie was", "The plot", "I loved", "Awful"]
BASE = ["cluster.layout=fused", "ppo.epochs=1", "ppo.mini_batch_size=4", "ppo.lr=0.01"]


def _cfg(*overrides: str):
    return load_config("configs/smoke.yaml", [*BASE, *overrides])


def _quantized_storages(model) -> set[int]:
    import bitsandbytes as bnb

    return {m.weight.untyped_storage().data_ptr() for m in model.modules() if isinstance(m, bnb.nn.Linear8bitLt)}


def _train(host, run: str, cfg, classifier, steps: int) -> list[dict]:
    scorer = RewardScorer(cfg, classifier)
    out = []
    for it in range(1, steps + 1):
        payload, _ = host.publish(run)
        host.load_adapter(run, payload)
        rollout, _ = host.generate(run, PROMPTS, iteration=it)
        metrics, _ = host.learn(run, [rollout], [scorer.score(rollout)], iteration=it)
        out.append(metrics)
    return out


@pytest.fixture(scope="module")
def pair(tiny_lm):
    a = _cfg("algo.advantage=gae", "run.seed=0")
    b = _cfg("algo.advantage=grpo", "run.seed=1", "model.lora_r=2", "model.target_modules=[q_proj]", "ppo.lr=0.003")
    return a, b, MultiRunPolicyHost({"a": a, "b": b}, tiny_lm)


def test_one_base_two_adapters_disjoint_optimizers(pair):
    a, b, host = pair
    ra, rb = host.runs["a"], host.runs["b"]
    assert ra.learner.model is rb.learner.model is ra.generator.model  # one model, every role of every run
    assert len(_quantized_storages(host.model)) == 2 * 7  # each quantized weight exists once
    pa = {id(p) for g in ra.learner.optimizer.param_groups for p in g["params"]}
    pb = {id(p) for g in rb.learner.optimizer.param_groups for p in g["params"]}
    assert pa and pb and not pa & pb
    names = {id(p): n for n, p in host.model.named_parameters()}
    # a: rank 4 on the default targets + a value head; b: rank 2 on q_proj only, GRPO (no value head)
    assert all(".run0." in names[i] for i in pa if i in names) and len(pa - set(names)) == 2  # head weight + bias
    assert all(".run1." in names[i] and "q_proj" in names[i] for i in pb) and rb.learner.value_head is None
    assert {p.shape[0] for g in rb.learner.optimizer.param_groups for p in g["params"] if p.dim() == 2} >= {2}
    assert "default" not in host.model.peft_config  # the placeholder adapter is gone


def test_learning_one_run_leaves_the_other_untouched(pair, tiny_classifier):
    a, b, host = pair
    before_b = host.runs["b"].learner.adapter().sha256
    metrics = _train(host, "a", a, tiny_classifier, 1)
    assert metrics[0]["policy/version"] == 1
    assert host.runs["b"].learner.adapter().sha256 == before_b
    assert host.runs["b"].learner.version == 0 and not host.runs["b"].learner.optimizer.state
    assert all(p.grad is None for p in host.model.parameters())
    # b learns too, after a: its own version, a untouched
    before_a = host.runs["a"].learner.adapter().sha256
    _train(host, "b", b, tiny_classifier, 1)
    assert host.runs["b"].learner.version == 1 and host.runs["a"].learner.adapter().sha256 == before_a


@pytest.mark.slow  # 5 s: in `make test`, not in test-fast (its neighbours cover disjoint optimizers and isolation)
def test_run_a_learns_the_same_with_and_without_b(tiny_lm, tiny_classifier):
    """k steps of run a: the same adapter, value head and optimizer state alone and beside run b
    (b trained in between each of a's steps), and the same as a single fused run with a's config."""
    a = _cfg("algo.advantage=gae", "run.seed=3")
    b = _cfg("algo.advantage=gae", "run.seed=4", "ppo.lr=0.003")
    alone = MultiRunPolicyHost({"a": a}, tiny_lm)
    beside = MultiRunPolicyHost({"b": b, "a": a}, tiny_lm)  # a second: its adapter is run1, not run0
    k = 2
    m_alone = _train(alone, "a", a, tiny_classifier, k)
    m_beside = []
    for it in range(1, k + 1):
        _train_step(beside, "b", b, tiny_classifier, it)
        m_beside.append(_train_step(beside, "a", a, tiny_classifier, it))
    la, lb = alone.runs["a"].learner, beside.runs["a"].learner
    assert la.adapter().sha256 == lb.adapter().sha256  # LoRA tensors + value head, bit for bit
    sa, sb = la.optimizer.state_dict(), lb.optimizer.state_dict()
    assert sa["param_groups"] == sb["param_groups"]
    for i in sa["state"]:
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(sa["state"][i][key], sb["state"][i][key])
    for x, y in zip(m_alone, m_beside):
        assert x["reward/mean"] == y["reward/mean"] and x["kl/mean"] == y["kl/mean"]
    # ... and as a fused single run with the same config
    solo = FusedPolicyHost(a, tiny_lm)
    scorer = RewardScorer(a, tiny_classifier)
    for it in range(1, k + 1):
        solo.load_adapter(solo.publish()[0])
        rollout, _ = solo.generate(PROMPTS, iteration=it)
        m, _ = solo.learn([rollout], [scorer.score(rollout)], iteration=it)
        assert m["reward/mean"] == m_alone[it - 1]["reward/mean"]
    assert solo.learner.adapter().sha256 == la.adapter().sha256


def _train_step(host, run, cfg, classifier, it):
    payload, _ = host.publish(run)
    host.load_adapter(run, payload)
    rollout, _ = host.generate(run, PROMPTS, iteration=it)
    metrics, _ = host.learn(run, [rollout], [RewardScorer(cfg, classifier).score(rollout)], iteration=it)
    return metrics


def test_checkpoint_restores_one_run_only(pair, tiny_classifier, tmp_path):
    a, b, host = pair
    files = host.checkpoint("b")
    # a run's adapter/ is a lone peft adapter (what eval and generate --adapter load), with b's rank and targets
    for name, data in files.items():
        if name.startswith("adapter/"):
            (tmp_path / name.split("/", 1)[1]).write_bytes(data)
    from peft import get_peft_model_state_dict

    from rlhf_ray.models.adapter import load_adapter_model

    loaded = load_adapter_model(tmp_path, quant="8bit", cache_dir=a.cache_dir())
    assert loaded.peft_config["default"].r == 2 and set(loaded.peft_config["default"].target_modules) == {"q_proj"}
    mine = get_peft_model_state_dict(host.model, adapter_name="run1")
    theirs = get_peft_model_state_dict(loaded)
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    files = host.checkpoint("a")
    saved = host.runs["a"].learner.adapter().sha256
    other = host.runs["b"].learner.adapter().sha256
    _train(host, "a", a, tiny_classifier, 1)
    assert host.runs["a"].learner.adapter().sha256 != saved
    host.restore("a", files)
    assert host.runs["a"].learner.adapter().sha256 == saved
    assert host.runs["b"].learner.adapter().sha256 == other
