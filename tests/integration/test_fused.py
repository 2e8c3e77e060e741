"""Fused layout on a real local Ray: one process hosts generator + learner over one base."""

from __future__ import annotations

import json

import pytest

from rlhf_ray.cli import main
from rlhf_ray.runtime.metrics import read_metrics

pytestmark = pytest.mark.usefixtures("ray_session")

SMOKE = "configs/smoke.yaml"
# The keys a separate-layout smoke run writes (tests/integration/test_ppo.py checks the same list).
SEPARATE_KEYS = {
    "iteration",
    "reward/mean",
    "reward/std",
    "reward/classifier/mean",  # the default reward source, by name
    "reward/none_frac",
    "kl/mean",
    "kl/coef",
    "kl/loss_coef",
    "policy/loss",
    "policy/clipfrac",
    "policy/approx_kl",
    "policy/grad_norm",
    "entropy/mean",
    "advantages/mean",
    "response/length_mean",
    "policy/version",
    "policy/sampled_version",
    "time/generate_s",
    "time/score_s",
    "time/learn_s",
    "time/sync_s",
    "time/iteration_s",
    "sync/bytes",
    "policy/lag",
    "time/experience_s",
    "time/update_s",
    "time/snapshot_s",
}


@pytest.mark.parametrize("advantage", ["gae", "grpo"])
def test_fused_smoke_runs_with_one_policy_process(advantage, tmp_path):
    run = tmp_path / advantage
    assert (
        main(
            [
                "ppo",
                "--config",
                SMOKE,
                "--run-dir",
                str(run),
                "cluster.layout=fused",
                f"algo.advantage={advantage}",
                "ppo.iterations=2",
            ]
        )
        == 0
    )
    rows = read_metrics(run / "metrics.jsonl")
    critic = {"value/loss", "value/clipfrac"} if advantage == "gae" else set()
    assert all(set(r) == SEPARATE_KEYS | critic for r in rows), [sorted(set(r) ^ SEPARATE_KEYS) for r in rows]
    assert [r["policy/version"] for r in rows] == [1, 2]
    assert [r["policy/sampled_version"] for r in rows] == [0, 1]
    # One policy process holds the only copy of the base; the scorer is its own small actor.
    placement = json.loads((run / "placement.json").read_text())
    assert sorted(p["actor"] for p in placement) == ["policy-0", "reward-0"]
    assert len({p["pid"] for p in placement}) == 2
    assert json.loads((run / "plan.json").read_text())["chosen_layout"] == "fused"
