"""The fused policy host as a plain class (no Ray): one model serves both roles."""

from __future__ import annotations

import pytest

from rlhf_ray.actors.fused import FusedPolicyHost
from rlhf_ray.actors.scorer import RewardScorer
from rlhf_ray.config.load import load_config
from rlhf_ray.models.adapter import AdapterIntegrityError


def _quantized_storages(host) -> set[int]:
    import bitsandbytes as bnb

    return {
        m.weight.untyped_storage().data_ptr()
        for m in host.learner.model.modules()
        if isinstance(m, bnb.nn.Linear8bitLt)
    }


@pytest.fixture(scope="module")
def host(tiny_lm):
    cfg = load_config("configs/smoke.yaml", ["cluster.layout=fused", "ppo.epochs=1", "ppo.mini_batch_size=4"])
    return cfg, FusedPolicyHost(cfg, tiny_lm)


def test_one_model_serves_both_roles_and_versions_advance(host, tiny_classifier):
    cfg, h = host
    assert h.generator.model is h.learner.model  # one base, one LoRA
    storages = _quantized_storages(h)
    assert len(storages) == 2 * 7  # 2 layers x (q, k, v, o, gate, up, down): each quantized weight exists once
    payload, receipt = h.publish()
    assert h.load_adapter(payload) == (receipt["version"], receipt["sha256"])
    rollout, info = h.generate(["This movie was", "The plot", "I loved", "Awful"], iteration=1)
    assert info.policy_version == 0
    scores = RewardScorer(cfg, tiny_classifier).score(rollout)
    metrics, new = h.learn([rollout], [scores], iteration=1)
    assert metrics["policy/version"] == 1 and metrics["policy/approx_kl"] == 0.0
    assert all(p.grad is None for p in h.learner.model.parameters())  # freed before the next sampling phase
    # The old payload no longer matches the shared weights: refused, never copied back over the learner's.
    with pytest.raises(AdapterIntegrityError):
        h.load_adapter(payload)
    assert h.load_adapter(new) == (1, new.sha256)
    assert _quantized_storages(h) == storages


def test_corrupt_payload_is_refused(host):
    _, h = host
    payload, _ = h.publish()
    bad = type(payload)(payload.version, payload.sha256, payload.data[:-1] + bytes([payload.data[-1] ^ 1]))
    with pytest.raises(AdapterIntegrityError):
        h.load_adapter(bad)
