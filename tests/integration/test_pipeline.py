"""The whole recipe through `rlhf-ray pipeline` on tiny models: sft -> merge -> reward -> ppo,
then a re-run that skips the finished stages and extends PPO from its checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from rlhf_ray.cli import main
from rlhf_ray.runtime.metrics import read_metrics

pytestmark = pytest.mark.usefixtures("ray_session")

TINY = [
    "model.policy=tiny-random-llama",
    "reward.model=null",
    "reward.backbone=tiny-random-bert",
    "sft.train_docs=40",
    "sft.max_steps=2",
    "sft.max_length=32",
    "sft.batch_size=4",
    "sft.grad_accum=1",
    "sft.eval_blocks=2",
    "reward.train_size=32",
    "reward.eval_size=16",
    "reward.train_batch_size=16",
    "reward.train_max_length=32",
]


def test_pipeline_runs_every_stage_then_skips_them(tmp_path):
    run = tmp_path / "pipe"
    args = [
        "pipeline",
        "--config",
        "configs/smoke.yaml",
        "--run-dir",
        str(run),
        f"run.cache_dir={tmp_path / 'cache'}",
        *TINY,
    ]
    assert main(args) == 0
    stages = json.loads((run / "pipeline.json").read_text())
    assert list(stages) == ["sft", "merge", "reward", "ppo"]
    ppo_cfg = yaml.safe_load((run / "ppo" / "config.yaml").read_text())
    assert ppo_cfg["model"]["policy"] == f"{stages['merge']}/model"  # PPO starts from the merged model
    assert ppo_cfg["reward"]["model"] == f"{stages['reward']}/model"  # scored by the trained classifier
    assert [r["iteration"] for r in read_metrics(run / "ppo" / "metrics.jsonl")] == [1, 2]
    # Provenance: which cached reward stage scored the run (its directory, content hash, accuracy).
    reward_ref = json.loads((run / "ppo" / "run_info.json").read_text())["models"]["reward"]
    assert reward_ref["stage_dir"] == stages["reward"] and stages["reward"].endswith("-" + reward_ref["stage_hash"])
    assert "accuracy" in reward_ref["stage_summary"]
    assert (Path(stages["reward"]) / "run_info.json").exists()  # cached stage outputs record theirs too

    done_times = {
        s: (tmp_path / "cache" / "stages" / d.split("/")[-1] / "DONE.json").stat().st_mtime
        for s, d in stages.items()
        if s != "ppo"
    }
    assert main([*args, "ppo.iterations=3"]) == 0  # same config for sft/merge/reward: all reused
    assert {
        s: (tmp_path / "cache" / "stages" / stages[s].split("/")[-1] / "DONE.json").stat().st_mtime for s in done_times
    } == done_times
    assert [r["iteration"] for r in read_metrics(run / "ppo" / "metrics.jsonl")] == [1, 2, 3]
