"""Data-parallel learners (no Ray): two gloo processes, each on its shard of every minibatch, take
the same step as one learner on the whole minibatch, and end with bit-identical adapters."""

from __future__ import annotations

import random
import socket

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load as st_load

from rlhf_ray.actors.dp import EPHEMERAL_RANGE, free_port
from rlhf_ray.batch import Rollout
from rlhf_ray.config.load import load_config

# 2 epochs x 2 minibatches of 2 rows (grad_accum 1): each rank trains on one row of every minibatch.
OVERRIDES = ["ppo.batch_size=4", "ppo.mini_batch_size=2", "ppo.epochs=2", "algo.kl_controller=adaptive"]


def synthetic_rollout(seed: int = 0) -> tuple[Rollout, torch.Tensor]:
    """4 samples with different response lengths (so token shares differ per shard) and scores."""
    g = torch.Generator().manual_seed(seed)
    B, P, R = 4, 5, 6
    prompt_ids = torch.randint(5, 500, (B, P), generator=g)
    prompt_mask = torch.ones(B, P, dtype=torch.long)
    prompt_mask[0, :2] = 0  # left padding
    response_ids = torch.randint(5, 500, (B, R), generator=g)
    lengths = torch.tensor([6, 2, 4, 3])
    response_mask = (torch.arange(R)[None, :] < lengths[:, None]).long()
    rollout = Rollout(prompt_ids, prompt_mask, response_ids, response_mask, ["p"] * B, ["r"] * B, policy_version=0)
    return rollout, torch.randn(B, generator=g)


def _rank(rank: int, world: int, port: int, model: str, out: str) -> None:
    from rlhf_ray.actors.learner import Learner

    learner = Learner(load_config("configs/smoke.yaml", OVERRIDES), model)
    learner.join_group("127.0.0.1", port, rank, world)
    rollout, scores = synthetic_rollout()
    metrics, payload = learner.learn([rollout], [scores], iteration=1)
    torch.save({"metrics": metrics, "adapter": payload.data, "kl_coef": learner.kl_ctl.value}, f"{out}/rank{rank}.pt")


@pytest.mark.slow  # two processes each import torch/transformers and build a learner: ~40 s of CPU
def test_two_learners_take_the_single_learner_step(tiny_lm, tmp_path):
    from rlhf_ray.actors.learner import Learner

    mp.spawn(_rank, args=(2, free_port(), tiny_lm, str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    single = Learner(load_config("configs/smoke.yaml", OVERRIDES), tiny_lm)
    initial = st_load(single.adapter().data)
    rollout, scores = synthetic_rollout()
    metrics, payload = single.learn([rollout], [scores], iteration=1)

    assert ranks[0]["adapter"] == ranks[1]["adapter"]  # bit-identical trainable weights on every rank
    dp, one = st_load(ranks[0]["adapter"]), st_load(payload.data)
    assert dp.keys() == one.keys() and any("value_head" in k for k in dp)
    assert any(not torch.equal(initial[k], one[k]) for k in one)  # the step did move the weights
    for key in one:
        torch.testing.assert_close(dp[key], one[key], rtol=1e-4, atol=1e-6, msg=key)
    for key in ("policy/loss", "value/loss", "policy/clipfrac", "kl/mean", "reward/mean", "advantages/mean"):
        assert ranks[0]["metrics"][key] == pytest.approx(metrics[key], rel=1e-4, abs=1e-6), key
        assert ranks[1]["metrics"][key] == ranks[0]["metrics"][key], key  # whole-batch statistics on every rank
    assert ranks[0]["kl_coef"] == ranks[1]["kl_coef"] == pytest.approx(single.kl_ctl.value)


def test_free_port_is_outside_the_ephemeral_range_and_bindable():
    """Ports the OS hands to outgoing connections never come back from free_port (a Ray head's agent
    once lost its port to one); the run's seeded `random` stream is not touched."""
    random.seed(5)
    expected = random.random()
    random.seed(5)
    ports = {free_port() for _ in range(5)}
    assert random.random() == expected
    if EPHEMERAL_RANGE.exists():
        low = int(EPHEMERAL_RANGE.read_text().split()[0])
        assert all(1024 <= p < low for p in ports), (ports, low)
    for port in ports:
        with socket.socket() as s:
            s.bind(("", port))
