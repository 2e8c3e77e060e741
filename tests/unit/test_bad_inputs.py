"""The bad-input catalogue: every mistake a user can make up front is exit code 2, exactly one line
on stderr, no traceback, and is found before any Ray actor starts (the PPO stage's run() is
replaced by a failure here, so a case that got that far fails the test)."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from safetensors.torch import save as st_save

from rlhf_ray.cli import main
from rlhf_ray.config.load import load_config, save_config
from rlhf_ray.stages import ppo as ppo_stage
from rlhf_ray.store.checkpoint import write_checkpoint

SMOKE = "configs/smoke.yaml"


@pytest.fixture(autouse=True)
def no_run(monkeypatch):
    monkeypatch.setattr(ppo_stage, "run", lambda *a, **k: pytest.fail("a bad input reached the PPO run"))


def one_line_error(capsys, argv: list[str]) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("rlhf-ray: error: "), err
    return lines[0]


def ppo(run_dir, *overrides: str, config: str | None = SMOKE) -> list[str]:
    return ["ppo", *(["--config", config] if config else []), "--run-dir", str(run_dir), *overrides]


def _csv(path, text: str):
    path.write_text(text)
    return str(path)


def _classifier(tmp_path, tiny_classifier, labels: dict[int, str]) -> str:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(tiny_classifier)
    config.num_labels, config.id2label = len(labels), labels
    config.label2id = {v: k for k, v in labels.items()}
    out = tmp_path / f"classifier-{len(labels)}"
    out.mkdir()
    config.save_pretrained(out)  # the label check reads the config only
    return str(out)


# (id, overrides, text expected in the one line) for cases that need only the command line
SIMPLE = [
    ("unknown-key", ["ppo.lrr=0.1"], "unknown key"),
    ("wrong-type", ["ppo.iterations=ten"], "must be of type int"),
    ("missing-value", ["ppo.lr="], "has no value"),
    ("not-key-value", ["ppo.lr"], "section.key=value"),
    ("gpu-fraction-above-1", ["cluster.learner_gpus=1.5"], "GPU fraction"),
    ("gpu-fraction-negative", ["cluster.scorer_gpus=-0.5"], "GPU fraction"),
    ("zero-cpus-zero-gpus", ["cluster.actor_cpus=0"], "cluster.actor_cpus"),
    ("more-gpus-than-machine", ["cluster.generator_gpus=1", "cluster.scorer_gpus=1", "cluster.learner_gpus=1"], "GPUs"),
    ("missing-model-path", ["model.policy=/no/such/model"], "does not exist"),
    ("missing-dataset-path", ["data.dataset=/no/such/reviews.csv"], "does not exist"),
    ("batch-not-divisible", ["ppo.batch_size=5"], "divisible"),
    ("prompt-longer-than-context", ["data.prompt_max_tokens=600"], "context of 512"),
    ("lora-target-not-in-model", ["model.target_modules=no_such_proj"], "no_such_proj"),
    ("negative-timeout", ["cluster.call_timeout_s=-1"], "cluster.call_timeout_s"),
]


@pytest.mark.parametrize("overrides,expected", [c[1:] for c in SIMPLE], ids=[c[0] for c in SIMPLE])
def test_command_line_mistakes(overrides, expected, tmp_path, capsys):
    line = one_line_error(capsys, ppo(tmp_path / "run", *overrides))
    assert expected in line
    assert not (tmp_path / "run").exists()  # refused before the run directory is made


def test_broken_yaml(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("ppo: [1, 2\n")
    assert "not valid YAML" in one_line_error(capsys, ppo(tmp_path / "run", config=str(bad)))


def test_empty_yaml(tmp_path, capsys):
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing here\n")
    assert "is empty" in one_line_error(capsys, ppo(tmp_path / "run", config=str(empty)))


def test_dataset_with_no_usable_prompts(tmp_path, capsys):
    data = _csv(tmp_path / "blank.csv", 'text,label\n"",1\n"   ",0\n')
    assert "no rows with text" in one_line_error(capsys, ppo(tmp_path / "run", f"data.dataset={data}"))


def test_dataset_without_the_text_column(tmp_path, capsys):
    data = _csv(tmp_path / "reviews.csv", "review,label\ngreat film,1\n")
    assert "nor a text column 'text'" in one_line_error(capsys, ppo(tmp_path / "run", f"data.dataset={data}"))


def test_reward_labels_do_not_fit_prob_score(tmp_path, tiny_classifier, capsys):
    one_label = _classifier(tmp_path, tiny_classifier, {0: "score"})
    line = one_line_error(capsys, ppo(tmp_path / "run", f"reward.model={one_label}", "reward.score=prob"))
    assert "reward.score" in line and ">= 2 labels" in line


def test_reward_labels_without_a_positive_one(tmp_path, tiny_classifier, capsys):
    three = _classifier(tmp_path, tiny_classifier, {0: "anger", 1: "joy", 2: "fear"})
    assert "none is named positive" in one_line_error(capsys, ppo(tmp_path / "run", f"reward.model={three}"))


def test_run_dir_is_a_file(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert "is a file" in one_line_error(capsys, ppo(tmp_path / "file"))


# ----------------------------------------------------------------------------- existing runs


def fake_run(run_dir, *, value_head: bool = True, corrupt: bool = False, overrides=()) -> None:
    """A run directory as `rlhf-ray ppo` leaves it: saved config and one checkpoint."""
    cfg = load_config(SMOKE, list(overrides))
    run_dir.mkdir(parents=True)
    save_config(cfg, run_dir / "config.yaml")
    tensors = {"base_model.model.lora_A.weight": torch.zeros(4, 8)}
    if value_head:
        tensors["value_head.summary.weight"] = torch.zeros(1, 8)
    files = {
        "policy.safetensors": st_save(tensors),
        "optimizer.pt": b"opt",
        "learner_state.json": json.dumps({"version": 1}).encode(),
        "driver_state.json": json.dumps({"iteration": 1}).encode(),
    }
    path = write_checkpoint(run_dir, 1, files)
    if corrupt:
        data = (path / "policy.safetensors").read_bytes()
        (path / "policy.safetensors").write_bytes(data[: len(data) // 2])  # truncated


def test_fresh_run_into_a_directory_holding_a_run(tmp_path, capsys):
    fake_run(tmp_path / "run")
    line = one_line_error(capsys, ppo(tmp_path / "run"))
    assert "already holds a run" in line and "--overwrite" in line


def test_resume_of_a_directory_without_checkpoint(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert "no checkpoint to resume from" in one_line_error(
        capsys, ["ppo", "--resume", str(tmp_path / "empty"), "--config", SMOKE]
    )


def test_resume_of_a_missing_directory(tmp_path, capsys):
    assert "no such run directory" in one_line_error(capsys, ["ppo", "--resume", str(tmp_path / "nope")])


def test_resume_whose_only_checkpoint_is_corrupt(tmp_path, capsys):
    fake_run(tmp_path / "run", corrupt=True)
    assert "no checkpoint to resume from" in one_line_error(capsys, ["ppo", "--resume", str(tmp_path / "run")])


def test_resume_of_a_gae_run_whose_checkpoint_has_no_value_head(tmp_path, capsys):
    fake_run(tmp_path / "run", value_head=False)
    line = one_line_error(capsys, ["ppo", "--resume", str(tmp_path / "run")])
    assert "no value head" in line


def test_resume_with_a_changed_adapter_rank_names_the_key(tmp_path, capsys):
    fake_run(tmp_path / "run")
    line = one_line_error(capsys, ["ppo", "--resume", str(tmp_path / "run"), "model.lora_r=8", "ppo.lr=0.01"])
    assert "model.lora_r, ppo.lr" in line


def test_resume_with_a_different_config_file_names_the_keys(tmp_path, capsys):
    fake_run(tmp_path / "run")
    other = tmp_path / "other.yaml"
    data = yaml.safe_load(open(SMOKE))
    data["model"]["target_modules"] = ["q_proj"]
    other.write_text(yaml.safe_dump(data))
    line = one_line_error(capsys, ["ppo", "--resume", str(tmp_path / "run"), "--config", str(other)])
    assert "model.target_modules" in line


def test_resume_and_overwrite_together(tmp_path, capsys):
    fake_run(tmp_path / "run")
    assert "pass one of them" in one_line_error(capsys, ["ppo", "--resume", str(tmp_path / "run"), "--overwrite"])
