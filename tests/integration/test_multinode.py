"""Two Ray nodes without a shared cache: placement over both, data-parallel learners in lockstep,
and no actor reading a driver-only path (tests/integration/multinode_run.py, in its own process)."""

from __future__ import annotations

import json

import pytest
from driver_process import run_script

from rlhf_ray.runtime.metrics import read_metrics


@pytest.mark.slow
def test_two_nodes_two_learners_no_shared_disk(tmp_path):
    result = run_script(["multinode_run.py"], tmp_path)
    assert result["code"] == 0, result["stderr"]
    run = tmp_path / "run"
    assert [r["iteration"] for r in read_metrics(run / "metrics.jsonl")] == [1, 2]

    placement = json.loads((run / "placement.json").read_text())
    assert [p["actor"] for p in placement] == ["generator-0", "generator-1", "reward-0", "learner-0", "learner-1"]
    assert len({p["node_id"] for p in placement}) == 2  # actors on both nodes
    prefix = {p["name"].rsplit("/", 1)[0] for p in placement}
    assert len(prefix) == 1 and all(p["name"].endswith("/" + p["actor"]) for p in placement)  # per-run names

    # Both learners end bit-identical, and training moved them.
    assert len(set(result["initial"])) == 1 and len(set(result["final"])) == 1
    assert result["final"][0] != result["initial"][0]

    # The driver's cache was out of reach while actors loaded: each node built or fetched its own copy.
    assert not (tmp_path / "driver-cache").exists()
    for node in ("node-a", "node-b"):  # the policy, by name, built on each node
        assert (tmp_path / node / "models" / "tiny-random-llama-v1" / "config.json").exists(), node
    # the reward model, published by the driver, fetched into the scorer's node cache
    assert list(tmp_path.glob("node-*/artifacts/tiny-random-bert-v1-*/config.json"))
