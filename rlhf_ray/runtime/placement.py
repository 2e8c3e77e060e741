"""Ray attach/start, one placement group for all roles, fractional GPUs, CPU mode, thread counts."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import ray
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from rlhf_ray.config.schema import ClusterConfig
from rlhf_ray.errors import UserError

log = logging.getLogger(__name__)

PROGRESS_EVERY_S = 10.0  # one progress line this often while placement waits

# Variables every Ray worker of ours gets: offline hubs, no tokenizer thread pools fighting torch.
WORKER_ENV = {
    "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"),
    "HF_DATASETS_OFFLINE": os.environ.get("HF_DATASETS_OFFLINE", "1"),
    "TOKENIZERS_PARALLELISM": "false",
}


# Ray starts workers at nice 15: on a busy machine every actor then yields the CPU to any ordinary
# process, Ray's own daemons included (see docs/benchmarks.md, "Faster than the peer"). Our actors are
# the job, not background work. On a cluster started with `ray start`, set RAY_worker_niceness=0 there.
LOCAL_SYSTEM_CONFIG = {"worker_niceness": 0}


def thread_env(torch_threads: int) -> dict[str, str]:
    """OpenMP/BLAS thread counts for worker processes. Ray sets OMP_NUM_THREADS=1 for any worker with
    under 2 reserved CPUs (ours reserve 0.5); libraries that read it when they load (MKL, OpenBLAS, a
    second OpenMP runtime) would then run single-threaded whatever torch.set_num_threads says."""
    threads = str(torch_threads or os.cpu_count() or 1)
    return {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads}


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
    runtime_env = {
        "env_vars": {**WORKER_ENV, **thread_env(cluster.torch_threads), **_cache_env()},
        # filters and the deferred compile in place before a worker imports bitsandbytes unpickling a role
        "worker_process_setup_hook": "rlhf_ray.process.set_up_worker",
    }
    ray.init(
        address="local",
        namespace=cluster.namespace,
        include_dashboard=cluster.dashboard,
        runtime_env=runtime_env,
        configure_logging=True,
        logging_level=logging.WARNING,
        _system_config=LOCAL_SYSTEM_CONFIG,
    )
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
    specs = [
        RoleSpec(f"generator-{i}", cluster.actor_cpus, cluster.generator_gpus) for i in range(cluster.num_generators)
    ]
    if with_scorers:
        specs += [RoleSpec(f"reward-{i}", cluster.actor_cpus, cluster.scorer_gpus) for i in range(cluster.num_scorers)]
    specs += [RoleSpec(f"learner-{i}", cluster.actor_cpus, cluster.learner_gpus) for i in range(cluster.num_learners)]
    return specs


def bundle(spec: RoleSpec) -> dict[str, float]:
    return {"CPU": spec.num_cpus, **({"GPU": spec.num_gpus} if spec.num_gpus > 0 else {})}


def _fits(need: dict[str, float], have: dict) -> bool:
    return all(amount <= have.get(key, 0) + 1e-9 for key, amount in need.items())


UNKNOWN_LIMITS: tuple[list[dict], dict] = ([], {})


AUTOSCALER_REPORT_WAIT_S = 30.0


def autoscaling_limits() -> tuple[list[dict], dict] | None:
    """(node type shapes, max total resources) when an autoscaler can add nodes; None on a fixed cluster.

    Autoscaler v2 publishes its node types with min/max counts to the GCS. The v1 autoscaler only
    publishes a status report: on a fixed cluster (a local Ray, plain `ray start` nodes) its provider
    is the read-only one, whose node types are named `node_<id>`; any other type means a real
    provider that can launch nodes, with limits we cannot read (UNKNOWN_LIMITS: wait, never refuse).
    No report within AUTOSCALER_REPORT_WAIT_S is unknown too: wait, never refuse."""
    from ray._private.state import state

    config = state.get_cluster_config()
    groups = [g for g in (config.node_group_configs if config else []) if g.resources and g.max_count != 0]
    if groups:
        if not any(g.max_count == -1 or g.max_count > g.min_count for g in groups):
            return None
        return [dict(g.resources) for g in groups], state.get_max_resources_from_cluster_config() or {}
    return UNKNOWN_LIMITS if _v1_autoscaler_can_launch() else None


def _v1_autoscaler_can_launch() -> bool:
    from ray._private import ray_constants
    from ray.experimental.internal_kv import _internal_kv_get

    # A fresh cluster's autoscaler publishes status before it knows its nodes: no report at first
    # (no load metrics yet), then reports whose nodes are missing while their heartbeats are late (a
    # loaded head; seen in CI). Only a report that names node types tells; wait for one.
    deadline = time.monotonic() + AUTOSCALER_REPORT_WAIT_S
    while True:
        raw = _internal_kv_get(ray_constants.DEBUG_AUTOSCALING_STATUS)
        report = (json.loads(raw).get("autoscaler_report") or {}) if raw else {}
        types = {
            *(report.get("active_nodes") or {}),
            *(report.get("pending_launches") or {}),
            *(report.get("node_type_mapping") or {}).values(),
        }
        if types:
            return any(not re.fullmatch(r"node_[0-9a-f]+", t) for t in types)
        if time.monotonic() >= deadline:
            # Whether the cluster can grow is unknown, so placement waits (bounded by
            # cluster.placement_timeout_s) rather than refuse what may fit.
            log.warning(
                "placement: no autoscaler report naming nodes within %.0fs; waiting, not refusing",
                AUTOSCALER_REPORT_WAIT_S,
            )
            return True
        time.sleep(0.5)


def check_fits(specs: list[RoleSpec]) -> bool:
    """Refuse at once (one line) what can never fit; True when placement may wait for the autoscaler.

    Never fits: a role larger than every node (type), or, on a fixed-size cluster, more than the
    cluster's total resources. An autoscaling cluster is measured against its configured maximum."""
    nodes = [n["Resources"] for n in ray.nodes() if n["Alive"]]
    total = {k: float(v) for k, v in ray.cluster_resources().items()}
    need = {key: sum(bundle(s).get(key, 0.0) for s in specs) for key in ("CPU", "GPU")}
    if _fits(need, ray.available_resources()) and all(any(_fits(bundle(s), n) for n in nodes) for s in specs):
        return False  # fits as the cluster is now: no autoscaler to ask, nothing to wait for
    limits = autoscaling_limits()
    if limits is UNKNOWN_LIMITS:
        return True
    if limits is not None:
        shapes, maximum = limits
        nodes = nodes + shapes
        total = {k: max(total.get(k, 0.0), float(maximum.get(k, 0))) for k in {*total, *maximum}}
    for spec in specs:
        if not any(_fits(bundle(spec), node) for node in nodes):
            unit = "GPU" if spec.num_gpus > 0 else "CPU"
            largest = max(node.get(unit, 0) for node in nodes)
            raise UserError(
                f"role {spec.name} asks for {bundle(spec)} but no node{' type' if limits else ''} of this Ray "
                f"cluster has that much (the largest has {largest:g} {unit}s): "
                "lower cluster.*_gpus (0 = CPU) or cluster.actor_cpus"
            )
    scope = "can grow to" if limits else "has"
    for key, hint in (
        ("GPU", "lower cluster.*_gpus (fractions of one GPU share it) or set them to 0 for CPU"),
        ("CPU", "lower cluster.actor_cpus"),
    ):
        if need[key] > total.get(key, 0) + 1e-9:
            raise UserError(
                f"the roles ask for {need[key]:g} {key}s in all but the Ray cluster {scope} "
                f"{total.get(key, 0):g}: {hint}"
            )
    return limits is not None and not _fits(need, ray.available_resources())


def run_id(run_dir) -> str:
    """Unique per run, readable in `ray list actors`: concurrent jobs on one cluster never collide."""
    return f"{Path(run_dir).name}-{os.urandom(3).hex()}"


def create_placement(specs: list[RoleSpec], cluster: ClusterConfig, name: str = "rlhf_ray") -> PlacementGroup:
    """One bundle per role. PACK: on one GPU node every role shares the device (fractional num_gpus)
    and bundles that do not fit spill to other nodes; SPREAD: replicas on different nodes where
    possible. A pending group is itself the autoscaler's demand, so waiting is requesting."""
    grows = check_fits(specs)
    bundles = [bundle(s) for s in specs]
    pg = placement_group(bundles, strategy=cluster.placement_strategy, name=name)
    timeout = cluster.placement_timeout_s
    start = time.monotonic()
    while not ray.wait([pg.ready()], timeout=min(PROGRESS_EVERY_S, max(timeout - (time.monotonic() - start), 0)))[0]:
        waited = time.monotonic() - start
        if waited >= timeout:
            remove_placement_group(pg)
            raise UserError(
                f"Ray could not place the roles {bundles} within {timeout:.0f}s: the cluster lacks free "
                "resources (check `ray status`; raise cluster.placement_timeout_s to wait longer)"
            )
        log.warning(
            "placement: waiting %.0fs of %.0fs for %s (%s)",
            waited,
            timeout,
            _summary(bundles),
            "the autoscaler is adding nodes" if grows else "resources are in use",
        )
    return pg


def _summary(bundles: list[dict]) -> str:
    need = {k: sum(b.get(k, 0) for b in bundles) for k in ("CPU", "GPU")}
    return f"{len(bundles)} bundles, {need['CPU']:g} CPU, {need['GPU']:g} GPU"


def actor_options(spec: RoleSpec, pg: PlacementGroup, index: int, namespace: str, run: str) -> dict:
    return {
        "name": f"{run}/{spec.name}",  # per run, role last: `ray list actors` shows both
        "namespace": namespace,
        "num_cpus": spec.num_cpus,
        "num_gpus": spec.num_gpus,
        "scheduling_strategy": PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=index),
        "max_concurrency": 1,
    }
