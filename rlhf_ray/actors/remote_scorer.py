"""The reward scorer's Ray wrapper, apart from the policy roles' (remote.py re-exports it).

A Ray worker imports the module its actor class was defined in. Defined beside the Generator and
the Learner, the scorer's process imported peft and bitsandbytes too (with the torch.compile
machinery bitsandbytes loads), which it never uses: on 2 cores that was about two thirds of its
start-up (`import rlhf_ray.actors.scorer` 3.6-4.9 s against 12.6-19.9 s for `rlhf_ray.actors.remote`).
A LoRA reward model still imports peft, when it loads one."""

from __future__ import annotations

import os

import ray

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


@ray.remote
class RewardScorerActor(RewardScorer):
    def where(self) -> dict:
        return where()
