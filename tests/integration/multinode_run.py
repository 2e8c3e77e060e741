"""Smoke PPO on two simulated Ray nodes that share no cache (run by test_multinode.py in its own
process: it starts its own Ray, apart from the test session's).

Each node's raylet (and so every actor on it) gets its own RLHF_RAY_CACHE. The reward model is a
directory only the driver has; the driver's cache is moved away after it is published and before
any actor loads, so an actor that opened a driver-side path would fail.

Usage: python tests/integration/multinode_run.py WORK_DIR  -> WORK_DIR/result.json"""

from __future__ import annotations

import json
import os
import secrets
import sys
from pathlib import Path

WORK = Path(sys.argv[1]).resolve()
DRIVER_CACHE = WORK / "driver-cache"
# Set before Ray is imported: the raylets inherit them (each node then overrides the cache dir),
# and the cluster's token auth (Ray 2.59+) uses a token of this run's own.
os.environ.update(
    {"RLHF_RAY_CACHE": str(DRIVER_CACHE), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
)

import ray  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

from rlhf_ray.actors.dp import free_port  # noqa: E402
from rlhf_ray.cli import main  # noqa: E402
from rlhf_ray.models.assets import resolve_model  # noqa: E402
from rlhf_ray.runtime import driver  # noqa: E402


def adapters(roles) -> list[str]:
    """Every learner's current adapter content hash."""
    return [ray.get(a.publish.options(num_returns=2).remote()[1])["sha256"] for a in roles.learner.actors]


def run() -> dict:
    result: dict = {}
    start, stop = driver.Roles.start, driver.Roles.stop

    def start_without_driver_files(cfg, policy, reward, run_dir, env=None):
        DRIVER_CACHE.rename(WORK / "driver-cache-moved")  # artifacts are published; now out of reach
        roles = start(cfg, policy, reward, run_dir, env)
        result["initial"] = adapters(roles)
        return roles

    def stop_after_reading(roles):
        result["final"] = adapters(roles)
        stop(roles)

    driver.Roles.start = staticmethod(start_without_driver_files)
    driver.Roles.stop = stop_after_reading
    reward_dir = resolve_model("tiny-random-bert", DRIVER_CACHE)  # a directory only the driver has
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 2,
            "gcs_server_port": free_port(),
            "include_dashboard": False,
            "env_vars": {"RLHF_RAY_CACHE": str(WORK / "node-a")},
        },
    )
    cluster.add_node(num_cpus=2, env_vars={"RLHF_RAY_CACHE": str(WORK / "node-b")})
    try:
        result["code"] = main(
            [
                "ppo",
                "--config",
                "configs/smoke.yaml",
                "--run-dir",
                str(WORK / "run"),
                f"reward.model={reward_dir}",
                "cluster.num_generators=2",
                "cluster.num_learners=2",
                "cluster.placement_strategy=SPREAD",
                f"cluster.address={cluster.address}",
            ]
        )
    finally:
        ray.shutdown()
        cluster.shutdown()
    return result


if __name__ == "__main__":
    (WORK / "result.json").write_text(json.dumps(run()))
