"""Overlapped rollouts (`ppo.overlap`): batch k+1 is sampled while the learner trains on batch k.

`RolloutSource` (driver side) hands the driver the rollouts of iteration k and, with overlap on,
  launches iteration k+1's generation at once, so it runs while k is scored and learned. The
  generator still holds the adapter the learner is about to replace, so those rollouts lag the
  learner by one version: one step off-policy, bounded by `ppo.max_policy_lag` (the learner side is
`actors.history.AdapterHistory`). Without overlap the source launches each batch when asked."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

from rlhf_ray.data.prompts import PromptState, PromptStream
from rlhf_ray.errors import StaleGeneratorError
from rlhf_ray.runtime.recovery import timed_get


@dataclass
class Batch:
    """One iteration's rollouts, still in the object store, and what the driver reads of them."""

    rollout_refs: list
    info_refs: list
    state_before: PromptState  # prompt stream position before this batch was drawn (for checkpoints)
    infos: list | None = None


class RolloutSource:
    """Prompts -> launched generation, at most one batch ahead of the learner when overlapping."""

    def __init__(self, generators: list, stream: PromptStream, cfg, last_iteration: int):
        p = cfg.ppo
        self.generators, self.stream, self.batch_size, self.overlap = generators, stream, p.batch_size, p.overlap
        self.samples_every, self.last, self.timeout_s = p.samples_every, last_iteration, cfg.cluster.call_timeout_s
        self.ahead: tuple[int, Batch] | None = None
        self.current: tuple[int, PromptState] | None = None  # the iteration taken last, and its prompt position

    def want_samples(self, iteration: int) -> bool:
        return iteration % self.samples_every == 0 or iteration == self.last

    def take(self, iteration: int) -> Batch:
        """The rollouts of `iteration` (waits for them); with overlap, iteration+1 starts sampling now.
        Taking the same iteration again (a redo after a recovery) samples it again from the same prompts."""

        if self.current is not None and self.current[0] == iteration:
            self.stream.state, self.ahead = replace(self.current[1]), None
        batch = self.ahead[1] if self.ahead and self.ahead[0] == iteration else self._launch(iteration)
        self.current = (iteration, replace(batch.state_before))
        # queued right behind this batch on each generator, so it starts the moment this one is done
        self.ahead = (iteration + 1, self._launch(iteration + 1)) if self.overlap and iteration < self.last else None
        batch.infos = timed_get(batch.info_refs, self.timeout_s)
        versions = {info.policy_version for info in batch.infos}
        if len(versions) != 1:
            raise StaleGeneratorError(f"generators sampled with different adapters: {sorted(versions)}")
        return batch

    def settle(self) -> float:
        """Wait for the batch sampled ahead (the next adapter sync must not overtake it); seconds waited."""
        import ray

        t0 = time.perf_counter()
        if self.ahead is not None:
            ray.wait(self.ahead[1].info_refs, num_returns=len(self.ahead[1].info_refs))
        return time.perf_counter() - t0

    def prompt_state(self) -> PromptState:
        """The stream position a resumed run must restart from: before any batch sampled ahead."""
        return self.ahead[1].state_before if self.ahead else replace(self.stream.state)

    def _launch(self, iteration: int) -> Batch:
        before = replace(self.stream.state)
        prompts = self.stream.next(self.batch_size)  # Prompt items (raw prompt and columns ride along)
        n = len(self.generators)
        # one prompt shard per generator; the rollouts stay in the object store
        outs = [
            g.generate.options(num_returns=2).remote(prompts[i::n], iteration, self.want_samples(iteration))
            for i, g in enumerate(self.generators)
        ]
        return Batch([r for r, _ in outs], [info for _, info in outs], before)
