"""N data-parallel learner actors presented to the driver as one learner.

Every rank trains on its shard of each minibatch and all-reduces gradients (rlhf_ray.actors.dp), so all
ranks hold the same adapter; rank 0 answers publish/checkpoint. Each `learn` also checks that every
rank's adapter hash agrees: a diverged learner stops the run instead of training silently apart."""

from __future__ import annotations

import ray

from rlhf_ray.actors.remote import LearnerActor
from rlhf_ray.config.schema import Config
from rlhf_ray.envs.runner import EnvSpec
from rlhf_ray.store.artifacts import ModelRef


class LearnersDivergedError(RuntimeError):
    """Data-parallel learners ended a step with different adapters."""


@ray.remote(num_cpus=0)
def _agree(*metrics: dict) -> dict:
    hashes = {m["policy/adapter_sha256"] for m in metrics}
    if len(hashes) != 1:
        raise LearnersDivergedError(f"data-parallel learners hold {len(hashes)} different adapters after one step")
    return metrics[0]


@ray.remote(num_cpus=0)
def _same(*values):
    if len(set(values)) != 1:
        raise LearnersDivergedError(f"data-parallel learners disagree: {values}")
    return values[0]


def join_ranks(actors: list) -> None:
    """Join data-parallel learner actors into one process group (nothing to join for one)."""
    if len(actors) > 1:
        host, port = ray.get(actors[0].dp_address.remote())
        ray.get([a.join_group.remote(host, port, rank, len(actors)) for rank, a in enumerate(actors)])


class LearnerGroup:
    def __init__(self, actors: list):
        self.actors = actors

    @staticmethod
    def start(
        cfg: Config, policy: ModelRef, options: list[dict], actor_cls=LearnerActor, env: EnvSpec | None = None
    ) -> "LearnerGroup":
        """One learner actor per entry of `options`; with more than one, join them into a process group.
        actor_cls: LearnerActor, or the fused layout's policy host (which is the generator too, and
        gets the run's environments `env`)."""
        extra = (env,) if env is not None and actor_cls is not LearnerActor else ()
        actors: list = []
        try:  # a rank failing to start must not leave the others running (a restart reuses their names)
            for opts in options:
                actors.append(actor_cls.options(**opts).remote(cfg, policy, *extra))
            join_ranks(actors)
        except BaseException:
            for actor in actors:
                ray.kill(actor)
            raise
        return LearnerGroup(actors)

    def learn(self, rollout_refs: list, score_refs: list, iteration: int) -> tuple:
        """-> (metrics ref, adapter payload ref), as one learner's `learn`."""
        outs = [a.learn.options(num_returns=2).remote(rollout_refs, score_refs, iteration) for a in self.actors]
        if len(outs) == 1:
            return outs[0]
        return _agree.remote(*[metrics for metrics, _ in outs]), outs[0][1]

    def publish(self) -> tuple:
        """-> (adapter payload ref, receipt ref) from rank 0 (all ranks hold the same adapter)."""
        return self.actors[0].publish.options(num_returns=2).remote()

    def checkpoint(self):
        return self.actors[0].checkpoint.remote()

    def restore(self, files: dict[str, bytes]):
        """Every rank loads the same checkpoint; -> ref of the restored version."""
        files_ref = ray.put(files)
        refs = [a.restore.remote(files_ref) for a in self.actors]
        # One learner: its own answer, as in learn(). A task would need a worker process, whose start
        # on a loaded node can take longer than the call timeout a recovery's restore runs under.
        return refs[0] if len(refs) == 1 else _same.remote(*refs)
