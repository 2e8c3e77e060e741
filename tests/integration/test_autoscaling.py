"""Placement waits for an autoscaler and refuses at once, in one line, only what can never fit."""

from __future__ import annotations

import json
import time

import pytest
from driver_process import run_script

from rlhf_ray.cli import main
from rlhf_ray.config.schema import ClusterConfig
from rlhf_ray.errors import UserError
from rlhf_ray.runtime import placement
from rlhf_ray.runtime.placement import autoscaling_limits, check_fits, role_specs


@pytest.mark.slow
def test_placement_waits_for_the_autoscaler(tmp_path):
    result = run_script(["autoscaling_run.py"], tmp_path)
    # 3 CPUs asked of a 1-CPU head: refused on a fixed cluster, here it waited while nodes were added
    assert result["nodes_before"] == 1 and result["nodes_after"] >= 2, result


def test_fixed_cluster_refuses_an_impossible_request_in_one_line(ray_session, tmp_path, capsys, monkeypatch):
    # The (read-only) autoscaler's first report that names the nodes, as on a cluster that has run
    # for a while: published every few seconds, later on a loaded machine. Without it the check
    # below would wait (AUTOSCALER_REPORT_WAIT_S, then placement) instead of reading that the cluster is fixed.
    monkeypatch.setattr(placement, "AUTOSCALER_REPORT_WAIT_S", 180.0)
    assert autoscaling_limits() is None, "a local Ray cannot grow (or no autoscaler report named its nodes in 180 s)"
    cpus = ray_session.cluster_resources()["CPU"]
    with pytest.raises(UserError, match="the Ray cluster has"):
        check_fits(role_specs(ClusterConfig(num_generators=int(cpus) * 4, actor_cpus=1.0)))
    # Refused at once: neither a wait for an autoscaler report (made 10 min here, so that one cannot
    # hide in the bound) nor for placement (cluster.start_timeout_s, 30 min by default). The bound
    # leaves a loaded machine two minutes for the config checks before the refusal.
    monkeypatch.setattr(placement, "AUTOSCALER_REPORT_WAIT_S", 600.0)
    start = time.monotonic()
    code = main(
        ["ppo", "--config", "configs/smoke.yaml", "--run-dir", str(tmp_path / "r"), f"cluster.actor_cpus={cpus + 1}"]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "no node of this Ray cluster" in err
    assert time.monotonic() - start < 120


def test_no_autoscaler_report_means_wait_not_refuse(monkeypatch):
    """A head too busy to publish its first report in time (seen in CI) may still grow: wait for it."""
    import ray.experimental.internal_kv as kv

    monkeypatch.setattr(kv, "_internal_kv_get", lambda key: None)
    monkeypatch.setattr(placement, "AUTOSCALER_REPORT_WAIT_S", 0.0)
    assert placement._v1_autoscaler_can_launch() is True


@pytest.mark.parametrize(
    ("report", "can_launch"),
    [
        ({}, True),  # status without a report (no load metrics yet): unknown, wait
        ({"autoscaler_report": {"active_nodes": {}, "pending_launches": {}}}, True),  # heartbeats late (CI)
        ({"autoscaler_report": {"active_nodes": {"node_0a1b": 1}}}, False),  # the read-only provider: fixed
        ({"autoscaler_report": {"active_nodes": {}, "node_type_mapping": {"10.0.0.1": "node_0a1b"}}}, False),
        ({"autoscaler_report": {"active_nodes": {"ray.head.default": 1}}}, True),  # a provider that launches
    ],
)
def test_only_a_report_naming_nodes_decides(monkeypatch, report, can_launch):
    """A report that names no node (the head's heartbeat late on a loaded machine) once read as a
    fixed cluster, and an autoscaling one was refused (CI, 2026-11-30)."""
    import ray.experimental.internal_kv as kv

    monkeypatch.setattr(kv, "_internal_kv_get", lambda key: json.dumps(report).encode())
    monkeypatch.setattr(placement, "AUTOSCALER_REPORT_WAIT_S", 0.0)
    assert placement._v1_autoscaler_can_launch() is can_launch
