"""The learner's last few adapter states (`ppo.overlap`): a rollout sampled one version behind gets
its old log-probs from the very policy that sampled it (the PPO ratio is taken against the sampler,
with the learner's numerics), and a rollout lagging more than `ppo.max_policy_lag` is refused.
Without overlap the history is empty (lag 0 only)."""

from __future__ import annotations

import contextlib

import torch

from rlhf_ray.errors import StaleRolloutError


def _snapshot(model, value_head, adapter_name: str) -> dict[str, torch.Tensor]:
    # peft is imported where it is used (as in models/adapter.py): the driver and the reward scorer
    # import this module through actors.remote and never need peft, nor the bitsandbytes and
    # torch.compile machinery it pulls in (4-12 s of CPU per process start on 2 cores)
    from peft import get_peft_model_state_dict

    # clone: on CPU, .cpu()/.detach() alias the live parameters that the optimizer is about to change
    lora = get_peft_model_state_dict(model, adapter_name=adapter_name)
    state = {k: v.detach().clone() for k, v in lora.items()}
    if value_head is not None:
        state.update({f"value_head.{k}": v.detach().clone() for k, v in value_head.state_dict().items()})
    return state


def _load(model, value_head, state: dict[str, torch.Tensor], adapter_name: str) -> None:
    from peft import set_peft_model_state_dict

    lora = {k: v for k, v in state.items() if not k.startswith("value_head.")}
    set_peft_model_state_dict(model, lora, adapter_name=adapter_name)
    if value_head is not None:
        value_head.load_state_dict(
            {k[len("value_head.") :]: v for k, v in state.items() if k.startswith("value_head.")}
        )


class AdapterHistory:
    """The trainable state of the last `depth` adapter versions (LoRA + value head: megabytes) of the
    model's adapter `adapter_name` (a sweep's run trains one named adapter of several)."""

    def __init__(self, depth: int, adapter_name: str = "default"):
        self.depth, self.adapter_name = depth, adapter_name
        self.states: dict[int, dict[str, torch.Tensor]] = {}

    def check(self, sampled: int, current: int) -> int:
        """The lag of a rollout sampled with adapter `sampled`; refuses one outside [0, depth]."""
        lag = current - sampled
        if not 0 <= lag <= self.depth:
            raise StaleRolloutError(
                f"rollouts sampled with adapter v{sampled}, learner is at v{current}: "
                f"lag {lag} is outside [0, ppo.max_policy_lag={self.depth}]"
            )
        return lag

    def record(self, version: int, model, value_head=None) -> None:
        """Keep adapter `version` (call before the update that replaces it)."""
        if self.depth == 0:
            return
        self.states[version] = _snapshot(model, value_head, self.adapter_name)
        for old in [v for v in self.states if v <= version - self.depth]:
            del self.states[old]

    @contextlib.contextmanager
    def policy_at(self, model, value_head, version: int, current: int):
        """Inside: the model computes with adapter `version`; the current one is restored after."""
        if version == current:
            yield
            return
        if version not in self.states:  # e.g. the first iteration after a resume
            raise StaleRolloutError(f"adapter v{version} is no longer kept by the learner (at v{current})")
        now = _snapshot(model, value_head, self.adapter_name)
        _load(model, value_head, self.states[version], self.adapter_name)
        try:
            yield
        finally:
            _load(model, value_head, now, self.adapter_name)
