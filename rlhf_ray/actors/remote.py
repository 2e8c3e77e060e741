"""Thin Ray wrappers: each role class as an actor, plus `where()` for placement.json.

Nothing else lives here; the roles are plain classes tested without Ray. A Ray worker imports this
module to build its actor, so it imports no model library at its top: each role loads peft,
bitsandbytes and transformers when it loads a model (the scorer never loads peft for a classifier)."""

from __future__ import annotations

import os

import ray

from rlhf_ray.actors.dp import free_port
from rlhf_ray.actors.fused import FusedPolicyHost
from rlhf_ray.actors.generator import Generator
from rlhf_ray.actors.learner import Learner
from rlhf_ray.actors.multirun import MultiRunPolicyHost
from rlhf_ray.actors.scorer import RewardScorer


def where() -> dict:
    """Where the calling actor runs (for placement.json)."""
    ctx = ray.get_runtime_context()
    return {
        "node_id": ctx.get_node_id(),
        "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
        "pid": os.getpid(),
        "hostname": os.uname().nodename,
    }


def dp_address() -> tuple[str, int]:
    """Where rank 0 of the data-parallel learners listens: this node's IP and a free port."""
    return ray.util.get_node_ip_address(), free_port()


@ray.remote
class GeneratorActor(Generator):
    def where(self) -> dict:
        return where()


@ray.remote
class RewardScorerActor(RewardScorer):
    def where(self) -> dict:
        return where()


@ray.remote
class LearnerActor(Learner):
    def where(self) -> dict:
        return where()

    def dp_address(self) -> tuple[str, int]:
        return dp_address()

    def learn(self, rollouts, scores, iteration):
        # Ray resolves only top-level ObjectRef arguments; these arrive as lists of refs, so the
        # shards travel generator -> learner through the object store, never via the driver.
        return super().learn(ray.get(rollouts), ray.get(scores), iteration)


@ray.remote
class FusedPolicyActor(FusedPolicyHost):
    """Generator and Learner roles in one process over one base (cluster.layout: fused)."""

    def where(self) -> dict:
        return where()

    def learn(self, rollouts, scores, iteration):
        return super().learn(ray.get(rollouts), ray.get(scores), iteration)  # lists of refs, as LearnerActor


@ray.remote
class MultiRunPolicyActor(MultiRunPolicyHost):
    """A sweep's runs over one base: each run's generator and learner calls name the run."""

    def where(self) -> dict:
        return where()

    def dp_address(self) -> tuple[str, int]:
        return dp_address()

    def learn(self, run, rollouts, scores, iteration):
        return super().learn(run, ray.get(rollouts), ray.get(scores), iteration)  # lists of refs, as LearnerActor
