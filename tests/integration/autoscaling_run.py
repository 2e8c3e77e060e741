"""Placement on a cluster whose autoscaler can add nodes (run by test_autoscaling.py in its own
process). Ray's real autoscaler runs over its fake node provider, which starts worker raylets on
this machine, as ray.cluster_utils.AutoscalingCluster does; that helper runs `ray stop --force`
(every Ray process of the user, other runs' too), so the head is started here in its own process
group on free ports and torn down by killing only that group.

Usage: python tests/integration/autoscaling_run.py WORK_DIR  -> WORK_DIR/result.json"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

# Token auth (Ray 2.59+): head, its raylets and this driver share one token, set before Ray is imported.
os.environ.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)})

import ray  # noqa: E402
import yaml  # noqa: E402

from rlhf_ray.actors.dp import free_port  # noqa: E402
from rlhf_ray.config.schema import ClusterConfig  # noqa: E402
from rlhf_ray.runtime.placement import create_placement, role_specs  # noqa: E402

BIN = Path(sys.executable).parent
WORKER = {"resources": {"CPU": 2}, "node_config": {}, "min_workers": 0, "max_workers": 2}


def autoscaling_config(gcs_address: str) -> dict:
    return {
        "cluster_name": "rlhf-ray-autoscaling-test",
        "max_workers": 2,
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": 1,
        "head_node_type": "ray.head.default",
        "provider": {
            "type": "fake_multinode",
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
            "gcs_address": gcs_address,
        },
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 1}, "node_config": {}, "max_workers": 0},
            "cpu2": WORKER,
        },
        "auth": {},
        "docker": {},
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        "rsync_exclude": [],
        "rsync_filter": [],
        "initialization_commands": [],
        "setup_commands": [],
        "head_setup_commands": [],
        "worker_setup_commands": [],
        "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
    }


def run(work: Path) -> dict:
    port = free_port()
    address = f"{ray.util.get_node_ip_address()}:{port}"
    config = work / "autoscaling.yaml"
    config.write_text(yaml.safe_dump(autoscaling_config(address)))
    env = {**os.environ, "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"}
    head = subprocess.Popen(
        [
            str(BIN / "ray"),
            "start",
            "--head",
            "--block",
            f"--port={port}",
            "--num-cpus=1",
            f"--autoscaling-config={config}",
            "--include-dashboard=false",
            "--disable-usage-stats",
        ],
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                ray.init(address=address)
                break
            except Exception:
                if head.poll() is not None or time.monotonic() > deadline:
                    raise
                time.sleep(2)
        result = {"nodes_before": len([n for n in ray.nodes() if n["Alive"]])}
        # 3 roles x 1 CPU on a 1-CPU head: only new worker nodes can hold them.
        grow = ClusterConfig(actor_cpus=1.0, placement_timeout_s=300)
        start = time.monotonic()
        create_placement(role_specs(grow), grow, name="grow")
        result.update(placed_s=time.monotonic() - start, nodes_after=len([n for n in ray.nodes() if n["Alive"]]))
        return result
    finally:
        ray.shutdown()
        os.killpg(head.pid, signal.SIGTERM)  # the head, its autoscaler and the raylets it launched
        try:
            head.wait(timeout=5)  # `ray start --block` can take 30 s to exit on SIGTERM: the group is killed
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)


if __name__ == "__main__":
    out = Path(sys.argv[1])
    (out / "result.json").write_text(json.dumps(run(out)))
