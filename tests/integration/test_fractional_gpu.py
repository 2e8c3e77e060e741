"""The fractional-GPU layout on a CPU-only host: a Ray cluster of its own declares one GPU, so the
placement group, its bundles and the GPU fractions are Ray's real ones; the models run on the CPU
(role_device: no CUDA in the process) and the run finishes. In a subprocess, apart from the test
session's Ray cluster."""

from __future__ import annotations

import json

import pytest
from driver_process import run_script

from rlhf_ray.runtime.metrics import read_metrics

FRACTIONS = {"generator-0": 0.25, "reward-0": 0.25, "learner-0": 0.5}  # one card, shared by all three
# Starts Ray with one declared GPU on this CPU-only machine, then runs PPO attached to it.
RUN = """
import json, sys
import ray
from rlhf_ray.cli import main

work = sys.argv[1]
ray.init(address="local", num_cpus=2, num_gpus=1, include_dashboard=False, logging_level="WARNING")
try:
    code = main(["ppo", "--config", "configs/smoke.yaml", "--run-dir", work + "/run", *sys.argv[2:]])
finally:
    ray.shutdown()
json.dump({"code": code}, open(work + "/result.json", "w"))
"""


@pytest.mark.slow  # a PPO job through Ray: 24 to 142 s on the shared 2-core development machine
def test_roles_share_one_declared_gpu_by_fraction_and_run_on_cpu(tmp_path):
    overrides = ["ppo.iterations=1", "cluster.layout=separate"]
    overrides += [f"cluster.{role.split('-')[0].replace('reward', 'scorer')}_gpus={f}" for role, f in FRACTIONS.items()]
    result = run_script(["-c", RUN], tmp_path, *overrides)
    assert result["code"] == 0, result["stderr"]
    run = tmp_path / "run"
    placement = {p["actor"]: p for p in json.loads((run / "placement.json").read_text())}
    assert set(placement) == set(FRACTIONS)
    for actor, fraction in FRACTIONS.items():
        assert placement[actor]["num_gpus"] == fraction
        assert placement[actor]["gpu_ids"] == ["0"], placement[actor]  # Ray gave each its share of the one GPU
    assert [r["iteration"] for r in read_metrics(run / "metrics.jsonl")] == [1]
