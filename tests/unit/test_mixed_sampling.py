"""One sampling call for every run of a sweep, each row under its run's adapter: the same as each
adapter sampled alone (tokens exactly, the reference's log-probs within float rounding)."""

from __future__ import annotations

import pytest
import torch

from rlhf_ray.actors.multirun import MultiRunPolicyHost
from rlhf_ray.config.load import load_config
from rlhf_ray.models.decode import LeanDecoder
from rlhf_ray.models.mixed import MixedRequest, sample_mixed, sample_mixed_transformers
from rlhf_ray.store import seeds

PROMPTS = ["This movie was", "The plot", "I loved it, and", "Awful"]


@pytest.fixture(scope="module", params=["lean", "transformers"])
def host(tiny_lm, request):
    """Four runs on one base, sampled through the lean loop or through transformers' forward."""
    BASE = ["cluster.layout=fused", f"generate.decoder={request.param}", "generate.max_new_tokens=8"]
    runs = {
        "a": load_config("configs/smoke.yaml", [*BASE, "run.seed=0"]),
        # another rank and targets, a cooler temperature, shorter responses
        "b": load_config(
            "configs/smoke.yaml",
            [
                *BASE,
                "run.seed=1",
                "model.lora_r=2",
                "model.target_modules=[q_proj,v_proj]",
                "generate.temperature=0.7",
                "generate.max_new_tokens=5",
            ],
        ),  # fmt: skip
        "c": load_config("configs/smoke.yaml", [*BASE, "run.seed=2", "generate.temperature=0.01"]),  # near-greedy
        # GRPO: two samples per prompt, grouped rows
        "d": load_config("configs/smoke.yaml", [*BASE, "run.seed=3", "algo.advantage=grpo", "algo.group_size=2"]),
    }
    h = MultiRunPolicyHost(runs, tiny_lm)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():  # fresh LoRAs are B = 0 (every adapter the base): make each adapter its own policy
        for name, p in h.model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    for run in runs:
        payload, _ = h.publish(run)
        h.load_adapter(run, payload)
    return h


def _mixed(host, requests):
    """The mixed call generate_many makes for this host's decoder."""
    gen = host.runs["a"].generator
    if gen.decoder == "lean":
        host.lean = host.lean or LeanDecoder(host.model)
        return sample_mixed(host.lean, gen.tokenizer, requests)
    return sample_mixed_transformers(host.model, gen.tokenizer, requests)


def _same(x, y):
    assert x.prompts == y.prompts and torch.equal(x.prompt_ids, y.prompt_ids)
    assert torch.equal(x.prompt_mask, y.prompt_mask)
    assert torch.equal(x.response_ids, y.response_ids) and torch.equal(x.response_mask, y.response_mask)
    assert x.responses == y.responses and x.temperature == y.temperature and x.group_size == y.group_size
    assert x.policy_version == y.policy_version
    torch.testing.assert_close(x.ref_logprobs, y.ref_logprobs, rtol=0, atol=1e-5)


# iteration 1 (another random stream, the same code path) only in `make test`: test-fast stays under a minute
@pytest.mark.parametrize("iteration", [pytest.param(1, marks=pytest.mark.slow), 2])
def test_mixed_call_equals_each_run_alone(host, iteration):
    runs = ["a", "b", "c", "d"]
    assert host.batched(runs) == host.runs["a"].generator.decoder
    out = host.generate_many([(run, PROMPTS, iteration, True) for run in runs])
    mixed = dict(zip(runs, zip(out[0::2], out[1::2])))
    for run in runs:
        alone, info = host.generate(run, PROMPTS, iteration, with_texts=True)
        _same(mixed[run][0], alone)
        assert mixed[run][1].responses == info.responses and mixed[run][1].adapter_hash == info.adapter_hash
    assert mixed["b"][0].response_ids.shape[1] <= 5 and mixed["d"][0].response_ids.shape[0] == 2 * len(PROMPTS)
    assert mixed["b"][0].temperature == 0.7


def test_each_row_really_runs_under_its_own_adapter(host):
    """b's request under a's adapter (same seed, temperature, prompts) samples something else: the
    equality above is not that of adapters that do nothing."""
    alone, _ = host.generate("b", PROMPTS, 1)
    b = host.runs["b"].generator.cfg
    request = MixedRequest(
        host.runs["a"].adapter, PROMPTS, b.generate.max_new_tokens, b.generate.temperature, 1,
        seeds.sampling(b.run.seed, 1, 0), alone.policy_version,
    )  # fmt: skip
    other = _mixed(host, [request])[0]
    assert not torch.equal(other.response_ids, alone.response_ids)


def test_one_request_is_the_single_run_path(host):
    """A mixed call of one request is the single-run path (tokens and reference log-probs)."""
    alone, _ = host.generate("a", PROMPTS, 3)
    out = host.generate_many([("a", PROMPTS, 3, False)])  # one run: sampled through its own generator
    _same(out[0], alone)
    a = host.runs["a"].generator.cfg
    request = MixedRequest(
        host.runs["a"].adapter, PROMPTS, a.generate.max_new_tokens, a.generate.temperature, 1,
        seeds.sampling(a.run.seed, 3, 0), alone.policy_version,
    )  # fmt: skip
    host.model.set_adapter(host.runs["b"].adapter)  # whichever is active: the request names its own
    _same(_mixed(host, [request])[0], alone)


def test_separate_layout_hosts_play_one_role_each(host, tiny_lm):
    """cluster.layout=separate: a generator host imports each run's adapter from its payload and samples
    the runs' mixed call as the fused host does (its rank picks its sampling stream, as a single run's
    generator's); a learner host holds the same fresh adapters and no generator."""
    runs = {run: state.generator.cfg for run, state in host.runs.items()}
    generator = MultiRunPolicyHost(runs, tiny_lm, role="generator", rank=0)
    assert all(state.learner is None for state in generator.runs.values())
    for run in runs:
        generator.load_adapter(run, host.publish(run)[0])
    requests = [(run, PROMPTS, 2, True) for run in runs]
    fused, separate = host.generate_many(requests), generator.generate_many(requests)
    for a, b in zip(fused[0::2], separate[0::2]):
        _same(a, b)
    other = MultiRunPolicyHost(runs, tiny_lm, role="generator", rank=1)
    for run in runs:
        other.load_adapter(run, host.publish(run)[0])
    assert not torch.equal(other.generate_many(requests)[0].response_ids, fused[0].response_ids)
    learner = MultiRunPolicyHost(runs, tiny_lm, role="learner")
    assert all(state.generator is None for state in learner.runs.values())
    fresh = MultiRunPolicyHost(runs, tiny_lm)  # the fused host before the fixture set its adapters
    for run in runs:
        assert learner.publish(run)[0].sha256 == fresh.publish(run)[0].sha256
