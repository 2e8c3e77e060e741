"""Thin Ray wrappers: each role class as an actor, plus `where()` for placement.json.

Nothing else lives here; the roles are plain classes tested without Ray. The scorer's wrapper lives
in remote_scorer.py (re-exported here) so that its process does not import the policy roles' peft."""

from __future__ import annotations

import ray

from rlhf_ray.actors.dp import free_port
from rlhf_ray.actors.fused import FusedPolicyHost
from rlhf_ray.actors.generator import Generator
from rlhf_ray.actors.learner import Learner
from rlhf_ray.actors.remote_scorer import RewardScorerActor, where

__all__ = ["FusedPolicyActor", "GeneratorActor", "LearnerActor", "RewardScorerActor", "where"]


@ray.remote
class GeneratorActor(Generator):
    def where(self) -> dict:
        return where()


@ray.remote
class LearnerActor(Learner):
    def where(self) -> dict:
        return where()

    def dp_address(self) -> tuple[str, int]:
        """Where rank 0 of the data-parallel learners listens: this node's IP and a free port."""
        return ray.util.get_node_ip_address(), free_port()

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
