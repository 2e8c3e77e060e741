"""PPO end to end on a real local Ray cluster (shared per test session) with tiny quantized models."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load as st_load

from rlhf_ray.cli import main
from rlhf_ray.runtime.metrics import read_metrics
from rlhf_ray.store.checkpoint import latest_checkpoint

pytestmark = pytest.mark.usefixtures("ray_session")

SMOKE = "configs/smoke.yaml"
REQUIRED = [
    "iteration",
    "reward/mean",
    "reward/std",
    "kl/mean",
    "kl/coef",
    "policy/loss",
    "policy/clipfrac",
    "policy/approx_kl",
    "entropy/mean",
    "response/length_mean",
    "policy/version",
    "time/generate_s",
    "time/score_s",
    "time/learn_s",
    "time/sync_s",
    "time/iteration_s",
    "sync/bytes",
]


def _lora_b(checkpoint_dir) -> dict[str, torch.Tensor]:
    state = st_load((checkpoint_dir / "policy.safetensors").read_bytes())
    return {k: v for k, v in state.items() if "lora_B" in k}


def test_gae_smoke_end_to_end_and_resume(tmp_path, capsys):
    run = tmp_path / "gae"
    assert main(["ppo", "--config", SMOKE, "--run-dir", str(run)]) == 0
    rows = read_metrics(run / "metrics.jsonl")
    assert [r["iteration"] for r in rows] == [1, 2]
    for key in REQUIRED + ["value/loss"]:
        assert all(key in r for r in rows), key
    assert [r["policy/version"] for r in rows] == [1, 2]  # advances every iteration
    assert [r["policy/sampled_version"] for r in rows] == [0, 1]  # each rollout used the latest adapter
    assert all(0 < r["sync/bytes"] < 1_000_000 for r in rows)  # only the adapter travels

    # The adapter trained: LoRA B starts at zero and is non-zero after PPO, and differs per iteration.
    first, second = _lora_b(run / "checkpoints" / "iter-000001"), _lora_b(run / "checkpoints" / "iter-000002")
    assert all(v.abs().sum() > 0 for v in second.values())
    assert any(not torch.equal(first[k], second[k]) for k in first)

    placement = json.loads((run / "placement.json").read_text())
    assert [p["actor"] for p in placement] == ["generator-0", "reward-0", "learner-0"]
    assert all(p["node_id"] for p in placement)
    samples = sorted((run / "samples").glob("*.parquet"))
    assert samples, "a Parquet table of samples is written"
    import pyarrow.parquet as pq

    assert set(pq.read_table(samples[-1]).column_names) >= {"prompt", "response", "score"}

    # Resume: continue from the latest checkpoint (iteration 2) to iteration 3.
    assert latest_checkpoint(run).name == "iter-000002"
    assert main(["ppo", "--resume", str(run), "ppo.iterations=3"]) == 0
    rows = read_metrics(run / "metrics.jsonl")
    assert [r["iteration"] for r in rows] == [1, 2, 3]
    assert rows[-1]["policy/version"] == 3 and rows[-1]["policy/sampled_version"] == 2
    assert latest_checkpoint(run).name == "iter-000003"


def test_grpo_with_two_generators_and_scorers(tmp_path):
    run = tmp_path / "grpo"
    overrides = [
        "algo.advantage=grpo",
        "algo.group_size=2",
        "cluster.num_generators=2",
        "cluster.num_scorers=2",
        "algo.kl_controller=adaptive",
    ]
    assert main(["ppo", "--config", SMOKE, "--run-dir", str(run), *overrides]) == 0
    rows = read_metrics(run / "metrics.jsonl")
    for key in REQUIRED:
        assert all(key in r for r in rows), key
    assert all("value/loss" not in r for r in rows)  # critic-free: no value head
    assert [r["policy/version"] for r in rows] == [1, 2]
    state = st_load((run / "checkpoints" / "iter-000002" / "policy.safetensors").read_bytes())
    assert not any(k.startswith("value_head.") for k in state)
    names = [p["actor"] for p in json.loads((run / "placement.json").read_text())]
    assert names == ["generator-0", "generator-1", "reward-0", "reward-1", "learner-0"]
    # 4 prompts x 2 samples each, split over two generator shards and joined by the learner
    assert rows[0]["response/length_mean"] > 0


def test_resume_without_checkpoint_and_impossible_gpus_are_user_errors(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["ppo", "--resume", str(tmp_path / "empty"), "--config", SMOKE]) == 2
    assert "no checkpoint" in capsys.readouterr().err
    # The 24 GB single-GPU layout on this CPU-only cluster: refused up front, nothing trained.
    assert main(["ppo", "--config", "configs/single_gpu_24gb.yaml", "--run-dir", str(tmp_path / "gpu")]) == 2
    err = capsys.readouterr().err
    assert "GPUs" in err and len(err.strip().splitlines()) == 1


def test_nan_reward_stops_the_run_with_one_clear_line(tmp_path, tiny_classifier, capsys):
    """A real broken reward model (NaN head weights) scoring inside a Ray actor."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    broken = tmp_path / "broken-classifier"
    model = AutoModelForSequenceClassification.from_pretrained(tiny_classifier)
    with torch.no_grad():
        model.classifier.weight.fill_(float("nan"))
    model.save_pretrained(broken)
    AutoTokenizer.from_pretrained(tiny_classifier).save_pretrained(broken)
    capsys.readouterr()  # drop the loading bars printed above
    code = main(["ppo", "--config", SMOKE, "--run-dir", str(tmp_path / "run"), f"reward.model={broken}"])
    err = capsys.readouterr().err.strip()
    errors = [line for line in err.splitlines() if line.startswith("rlhf-ray: error:")]
    assert code == 2 and len(errors) == 1 and "non-finite scores" in errors[0] and "Traceback" not in err
