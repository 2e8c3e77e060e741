"""A reward model from preference pairs on real Ray: `rlhf-ray reward reward.objective=pairwise` on a tiny
encoder and a user's JSONL of prompt/chosen/rejected rows, then its output scoring PPO as a `kind: model`
source (named in reward.sources, and as the pipeline's default source)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from rlhf_ray.cli import main
from rlhf_ray.runtime.metrics import read_metrics

pytestmark = pytest.mark.usefixtures("ray_session")

REPO = Path(__file__).resolve().parents[2]
SMOKE = REPO / "configs" / "smoke.yaml"
GOOD = ["great", "wonderful", "moving", "lovely"]
BAD = ["awful", "boring", "dull", "dreadful"]
PAIRWISE = [
    "reward.objective=pairwise",
    "reward.backbone=tiny-random-bert",
    "reward.train_size=400",
    "reward.eval_size=100",
    "reward.epochs=2",
    "reward.lr=2e-3",
    "reward.train_batch_size=16",
    "reward.train_max_length=32",
    "cluster.torch_threads=1",
]


def write_pairs(path: Path) -> Path:
    """Separable toy preferences: the chosen answer praises, the rejected one pans, over varied prompts;
    two rows whose chosen equals their rejected are skipped and counted."""
    rows = [
        {
            "prompt": f"review {i} of film {i % 7}: ",
            "chosen": f"a {GOOD[i % 4]} and {GOOD[(i // 4) % 4]} story",
            "rejected": f"a {BAD[(i + 1) % 4]} and {BAD[(i // 3) % 4]} story",
        }
        for i in range(240)
    ]
    rows += [{"prompt": "same: ", "chosen": "a plain story", "rejected": "a plain story"}] * 2
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> Path:
    return write_pairs(tmp_path_factory.mktemp("pairs") / "pairs.jsonl")


@pytest.fixture(scope="module")
def rm_dir(pairs, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("rm")
    assert main(["reward", "--run-dir", str(run), f"reward.dataset={pairs}", *PAIRWISE]) == 0
    return run


def test_pairwise_stage_learns_the_preferences_and_saves_a_scalar_model(rm_dir):
    from rlhf_ray.rewards.classifier import RewardModel

    done = json.loads((rm_dir / "DONE.json").read_text())
    assert done["objective"] == "pairwise" and done["skipped_identical"] == 2
    assert done["train_size"] + done["eval_size"] == 240  # ~10% held out by a hash of each row
    # Separable toy preferences: a trained model ranks the held-out pairs right, a broken loop does not.
    assert done["accuracy"] >= 0.9 and done["margin"] > 0 and done["accuracy_before"] is None  # a new head
    losses = [row["loss"] for row in read_metrics(rm_dir / "metrics.jsonl")]
    assert len(losses) == done["steps"] == 2 * -(-done["train_size"] // 16) and losses[-1] < losses[0]
    reward = RewardModel(str(rm_dir / "model"))
    assert reward.model.config.num_labels == 1
    scores = reward.score(
        ["review 3 of film 3: a lovely and great story", "review 3 of film 3: a dull and awful story"]
    )
    assert scores[0] > scores[1]


def test_a_lora_pairwise_model_on_an_8bit_backbone_builds_as_a_model_source(pairs, tmp_path):
    from rlhf_ray.config.schema import Config, RewardSourceConfig
    from rlhf_ray.rewards.sources import ModelSource, spec_of

    argv = ["reward", "--run-dir", str(tmp_path), f"reward.dataset={pairs}", *PAIRWISE, "reward.lr=2e-2"]
    assert main([*argv, "reward.method=lora", "reward.quant=8bit", "model.lora_r=8"]) == 0
    done = json.loads((tmp_path / "DONE.json").read_text())
    assert done["method"] == "lora" and done["accuracy"] >= 0.9
    model = str(tmp_path / "model")  # an adapter directory + labels.json: one output
    source = ModelSource(
        spec_of(RewardSourceConfig(kind="model", model=model), "reward.sources[0]", model), Config(), "cpu"
    )
    scores = source.model.score(["review 1: a wonderful and lovely story", "review 1: a boring and dreadful story"])
    assert source.model.model.config.num_labels == 1 and scores[0] > scores[1]


@pytest.mark.slow
def test_pairwise_model_scores_ppo_as_a_model_source(rm_dir, tmp_path):
    config = yaml.safe_load(SMOKE.read_text())
    config["reward"]["sources"] = [{"kind": "model", "model": str(rm_dir / "model"), "name": "prefs"}]
    config["ppo"]["iterations"] = 1
    path, run = tmp_path / "config.yaml", tmp_path / "run"
    path.write_text(yaml.safe_dump(config))
    assert main(["ppo", "--config", str(path), "--run-dir", str(run)]) == 0
    (row,) = read_metrics(run / "metrics.jsonl")
    assert row["reward/none_frac"] == 0.0 and row["reward/prefs/mean"] == pytest.approx(row["reward/mean"], rel=1e-5)
    recorded = json.loads((run / "run_info.json").read_text())["models"]["reward:prefs"]
    assert recorded["configured"] == str(rm_dir / "model") and recorded["stage_summary"]["objective"] == "pairwise"


@pytest.mark.slow
def test_pipeline_trains_the_pairwise_model_and_ppo_scores_with_it(pairs, tmp_path):
    run = tmp_path / "pipe"
    argv = [
        "pipeline",
        "--config",
        str(SMOKE),
        "--run-dir",
        str(run),
        f"run.cache_dir={tmp_path / 'cache'}",
        "pipeline.stages=[reward, ppo]",
        "reward.model=null",
        f"reward.dataset={pairs}",
        "ppo.iterations=1",
        *PAIRWISE,
    ]
    assert main(argv) == 0
    stages = json.loads((run / "pipeline.json").read_text())
    ppo_cfg = yaml.safe_load((run / "ppo" / "config.yaml").read_text())
    assert ppo_cfg["reward"]["model"] == f"{stages['reward']}/model"
    (row,) = read_metrics(run / "ppo" / "metrics.jsonl")
    assert row["reward/pairwise/mean"] == pytest.approx(row["reward/mean"], rel=1e-5)  # the default source
    # Recorded as the classifier's is: the cached stage that scored the run, with its held-out figure.
    reward_ref = json.loads((run / "ppo" / "run_info.json").read_text())["models"]["reward"]
    assert reward_ref["stage_dir"] == stages["reward"]
    assert reward_ref["stage_summary"]["objective"] == "pairwise" and reward_ref["stage_summary"]["accuracy"] >= 0.9
