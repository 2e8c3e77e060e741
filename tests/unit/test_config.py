"""Config loading and validation: every bad input is one line naming the key, exit code 2."""

from __future__ import annotations

import subprocess
import sys

import pytest

from rlhf_ray.cli import main
from rlhf_ray.config.load import load_config
from rlhf_ray.config.parse import parse_overrides
from rlhf_ray.config.schema import Config
from rlhf_ray.errors import ConfigError


def test_defaults_validate_and_overrides_apply(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("ppo:\n  iterations: 3\nmodel:\n  quant: 4bit\n")
    cfg = load_config(path, ["ppo.lr=3e-4", "model.target_modules=q_proj,v_proj", "reward.model=null"])
    assert cfg.ppo.iterations == 3 and cfg.model.quant == "4bit"
    assert cfg.ppo.lr == pytest.approx(3e-4)
    assert cfg.model.target_modules == ["q_proj", "v_proj"]
    assert cfg.reward.model is None
    assert cfg.ppo.batch_size == Config().ppo.batch_size  # untouched default


def test_int_is_accepted_for_float():
    assert load_config(None, ["ppo.lr=1"]).ppo.lr == 1.0


def test_parse_overrides_nests():
    assert parse_overrides(["a.b.c=1", "a.d=x"]) == {"a": {"b": {"c": 1}, "d": "x"}}


BAD = [
    (["ppo.lrr=0.1"], "ppo.lrr", "unknown key"),
    (["nosuch.key=1"], "nosuch", "unknown key"),
    (["ppo.iterations=ten"], "ppo.iterations", "must be of type int"),
    (["ppo.whiten_advantages=3"], "ppo.whiten_advantages", "must be of type bool"),
    (["ppo.lr=-0.001"], "ppo.lr", "must be > 0"),
    (["cluster.learner_gpus=1.5"], "cluster.learner_gpus", "GPU fraction"),
    (["cluster.generator_gpus=-0.2"], "cluster.generator_gpus", "GPU fraction"),
    (["ppo.batch_size=10", "ppo.mini_batch_size=4"], "ppo.mini_batch_size", "divisible"),
    (["model.policy=/no/such/model"], "model.policy", "does not exist"),
    (["reward.model=./missing-classifier"], "reward.model", "does not exist"),
    (["model.quant=3bit"], "model.quant", "must be one of 8bit, 4bit, none"),
    (["algo.advantage=grpo", "algo.group_size=1"], "algo.group_size", "at least 2"),
    # mini_batch_size counts samples: 4 gae prompts are 4 samples, fewer than one minibatch of 8
    (["ppo.batch_size=4", "ppo.mini_batch_size=8"], "ppo.mini_batch_size", "divisible"),
    (["ppo.overlap=true", "ppo.max_policy_lag=0"], "ppo.max_policy_lag", ">= 1"),
    (["bench.quant_modes=8bit,2bit"], "bench.quant_modes[1]", "must be one of"),
]


def test_mini_batch_size_counts_samples_not_prompts():
    # 4 prompts x 4 GRPO samples = 16 rows: two minibatches of 8 samples (refused before issue 10)
    cfg = load_config(None, ["algo.advantage=grpo", "algo.group_size=4", "ppo.batch_size=4", "ppo.mini_batch_size=8"])
    assert cfg.ppo.mini_batch_size == 8


@pytest.mark.parametrize("overrides,key,problem", BAD)
def test_bad_values_name_the_key(overrides, key, problem):
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides)
    message = str(info.value)
    assert f"'{key}" in message and problem in message
    assert "\n" not in message


def test_on_and_off_mean_the_words_on_the_command_line_and_in_yaml(tmp_path):
    """YAML 1.1 reads on/off as booleans; a key whose choices are the words gets the words."""
    assert load_config(None, ["model.dequant_cache=off"]).model.dequant_cache == "off"
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  dequant_cache: on\n")
    assert load_config(path).model.dequant_cache == "on"


def test_bad_yaml_file_is_a_config_error(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("ppo: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


@pytest.mark.parametrize("overrides,key,problem", BAD[:6])
def test_cli_exits_2_with_one_line(overrides, key, problem, capsys, tmp_path):
    code = main(["ppo", "--run-dir", str(tmp_path / "run"), *overrides])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and key in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()  # nothing is created for a rejected config


def test_console_script_help_and_exit_code():
    exe = [sys.executable, "-m", "rlhf_ray.cli"]
    out = subprocess.run([*exe, "--help"], capture_output=True, text=True, check=True).stdout
    for command in ("ppo", "sft", "merge", "reward", "pipeline"):
        assert command in out
    bad = subprocess.run([*exe, "sft", "sft.lr=-1"], capture_output=True, text=True)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [bad.stderr.strip()] and "sft.lr" in bad.stderr


def test_config_command_prints_resolved_config(capsys):
    assert main(["config", "ppo.iterations=7"]) == 0
    assert '"iterations": 7' in capsys.readouterr().out
