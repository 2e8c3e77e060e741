"""Ray attach/start, one placement group for all roles, fractional GPUs, CPU mode, thread counts."""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass

import ray
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from rlhf_ray.config import ClusterConfig
from rlhf_ray.errors import UserError
from rlhf_ray.threads import set_torch_threads  # noqa: F401  (lives in a Ray-free module; re-exported)

log = logging.getLogger(__name__)

# Variables every Ray worker of ours gets: offline hubs, no tokenizer thread pools fighting torch.
WORKER_ENV = {
    "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"),
    "HF_DATASETS_OFFLINE": os.environ.get("HF_DATASETS_OFFLINE", "1"),
    "TOKENIZERS_PARALLELISM": "false",
}


def connect(cluster: ClusterConfig) -> bool:
    """Attach to cluster.address / $RAY_ADDRESS, or start a local Ray. Returns True if we started it."""
    if ray.is_initialized():
        return False
    address = cluster.address or os.environ.get("RAY_ADDRESS")
    if address:
        log.info("attaching to Ray at %s", address)
        # No runtime_env here: a `ray job submit` driver already has the job's, and Ray refuses to merge two.
        ray.init(address=address, namespace=cluster.namespace, log_to_driver=True)
        return False
    # address="local": always a fresh local Ray, never a stale cluster found in /tmp/ray.
    runtime_env = {"env_vars": {**WORKER_ENV, **_cache_env()}}
    ray.init(address="local", namespace=cluster.namespace, include_dashboard=cluster.dashboard, runtime_env=runtime_env,
             configure_logging=True, logging_level=logging.WARNING)
    return True


@contextlib.contextmanager
def attached(cluster: ClusterConfig):
    """Ray for the duration of a stage: shut down on exit only if this call started it."""
    started = connect(cluster)
    try:
        yield
    finally:
        if started:
            ray.shutdown()


def _cache_env() -> dict[str, str]:
    return {"RLHF_RAY_CACHE": os.environ["RLHF_RAY_CACHE"]} if "RLHF_RAY_CACHE" in os.environ else {}


@dataclass(frozen=True)
class RoleSpec:
    """One actor to place: its name in the namespace and its resource share."""

    name: str
    num_cpus: float
    num_gpus: float


def role_specs(cluster: ClusterConfig, with_scorers: bool = True) -> list[RoleSpec]:
    specs = [RoleSpec(f"generator-{i}", cluster.actor_cpus, cluster.generator_gpus) for i in range(cluster.num_generators)]
    if with_scorers:
        specs += [RoleSpec(f"reward-{i}", cluster.actor_cpus, cluster.scorer_gpus) for i in range(cluster.num_scorers)]
    specs += [RoleSpec(f"learner-{i}", cluster.actor_cpus, cluster.learner_gpus) for i in range(cluster.num_learners)]
    return specs


def check_fits(specs: list[RoleSpec]) -> None:
    """Fail before placing anything when the cluster cannot hold the roles (a clear error, not a hang)."""
    total = ray.cluster_resources()
    need_gpu = sum(s.num_gpus for s in specs)
    need_cpu = sum(s.num_cpus for s in specs)
    if need_gpu > total.get("GPU", 0) + 1e-9:
        raise UserError(
            f"the roles ask for {need_gpu:g} GPUs in all but the Ray cluster has {total.get('GPU', 0):g}: "
            "lower cluster.*_gpus (fractions of one GPU share it) or set them to 0 for CPU"
        )
    if need_cpu > total.get("CPU", 0) + 1e-9:
        raise UserError(
            f"the roles ask for {need_cpu:g} CPUs in all but the Ray cluster has {total.get('CPU', 0):g}: "
            "lower cluster.actor_cpus"
        )


def create_placement(specs: list[RoleSpec], timeout_s: float = 120.0) -> PlacementGroup:
    """One bundle per role, PACK strategy: on one GPU node every role lands on the same device
    (fractional num_gpus); on a cluster, bundles that do not fit spill to other nodes."""
    check_fits(specs)
    bundles = [{"CPU": s.num_cpus, **({"GPU": s.num_gpus} if s.num_gpus > 0 else {})} for s in specs]
    pg = placement_group(bundles, strategy="PACK", name="rlhf_ray")
    ready, _ = ray.wait([pg.ready()], timeout=timeout_s)
    if not ready:
        remove_placement_group(pg)
        raise UserError(f"Ray could not place the roles {bundles} within {timeout_s:.0f}s: "
                        "the cluster lacks free resources (check `ray status`)")
    return pg


def actor_options(spec: RoleSpec, pg: PlacementGroup, index: int, namespace: str) -> dict:
    return {
        "name": spec.name,
        "namespace": namespace,
        "num_cpus": spec.num_cpus,
        "num_gpus": spec.num_gpus,
        "scheduling_strategy": PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=index),
        "max_concurrency": 1,
    }


def where() -> dict:
    """Where the calling actor runs (for placement.json)."""
    ctx = ray.get_runtime_context()
    return {"node_id": ctx.get_node_id(), "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
            "pid": os.getpid(), "hostname": os.uname().nodename}
