"""Bad reward.sources input: exit code 2, one line on stderr naming the key, and nothing started
(the PPO stage's run() is replaced by a failure, and no run directory may appear)."""

from __future__ import annotations

import pytest
import yaml

from rlhf_ray.cli import main
from rlhf_ray.stages import ppo as ppo_stage

SMOKE = "configs/smoke.yaml"

FUNCTIONS = "def good(prompts, completions, **columns):\n    return [0.0] * len(completions)\n\nTHRESHOLD = 0.5\n"


@pytest.fixture(autouse=True)
def no_run(monkeypatch):
    monkeypatch.setattr(ppo_stage, "run", lambda *a, **k: pytest.fail("a bad input reached the PPO run"))


@pytest.fixture
def fn_file(tmp_path):
    path = tmp_path / "rewards_fns.py"
    path.write_text(FUNCTIONS)
    return path


def refused(capsys, tmp_path, sources: list, *overrides: str) -> str:
    config = yaml.safe_load(open(SMOKE))
    config["reward"]["sources"] = sources
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    run_dir = tmp_path / "run"
    code = main(["ppo", "--config", str(path), "--run-dir", str(run_dir), *overrides])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("rlhf-ray: error: ") and "Traceback" not in err, err
    assert not run_dir.exists()
    return err


def test_function_file_that_does_not_exist(capsys, tmp_path):
    err = refused(capsys, tmp_path, [{"kind": "function", "function": "no/such/file.py:fn"}])
    assert "'reward.sources[0].function': file no/such/file.py does not exist" in err


def test_function_name_that_does_not_exist(capsys, tmp_path, fn_file):
    err = refused(capsys, tmp_path, [{"kind": "classifier"}, {"kind": "function", "function": f"{fn_file}:goood"}])
    assert "'reward.sources[1].function'" in err and "has no function 'goood'; did you mean good?" in err


def test_function_that_is_not_callable(capsys, tmp_path, fn_file):
    err = refused(capsys, tmp_path, [{"kind": "function", "function": f"{fn_file}:THRESHOLD"}])
    assert "is a float, not a function" in err


def test_function_module_that_does_not_import(capsys, tmp_path):
    err = refused(capsys, tmp_path, [{"kind": "function", "function": "no_such_pkg_xyz.rewards:fn"}])
    assert "module no_such_pkg_xyz.rewards cannot be imported" in err


def test_unknown_kind(capsys, tmp_path):
    err = refused(capsys, tmp_path, [{"kind": "lambda", "function": "x.py:f"}])
    assert "'reward.sources[0].kind': must be one of classifier, model, function, http, env; got 'lambda'" in err


def test_unknown_key_inside_an_entry_suggests_the_right_one(capsys, tmp_path, fn_file):
    err = refused(capsys, tmp_path, [{"kind": "classifier"}, {"kind": "function", "functon": f"{fn_file}:good"}])
    assert "'reward.sources[1].functon': unknown key; did you mean reward.sources[1].function?" in err


@pytest.mark.parametrize(
    "url, problem",
    [
        ("http://127.0.0.1:99999/score", "does not parse"),
        ("127.0.0.1:8000/score", "must be an http(s) URL"),
        ("ftp://host/score", "must be an http(s) URL"),
        ("http:///score", "must be an http(s) URL"),
    ],
)
def test_http_url_that_does_not_parse(capsys, tmp_path, url, problem):
    err = refused(capsys, tmp_path, [{"kind": "http", "url": url}])
    assert "'reward.sources[0].url'" in err and problem in err


def test_duplicate_names(capsys, tmp_path, fn_file):
    sources = [
        {"kind": "function", "function": f"{fn_file}:good"},
        {"kind": "classifier"},
        {"kind": "function", "function": f"{fn_file}:good", "weight": 2},
    ]
    err = refused(capsys, tmp_path, sources)
    assert "'reward.sources[2].name': duplicate reward source name 'fn:good' (also reward.sources[0])" in err


@pytest.mark.parametrize("weight", [float("inf"), float("nan")])
def test_non_finite_weight(capsys, tmp_path, weight):
    err = refused(capsys, tmp_path, [{"kind": "classifier", "weight": weight}])
    assert "'reward.sources[0].weight': must be a finite number" in err


def test_a_key_another_kind_reads_and_a_missing_target(capsys, tmp_path, fn_file):
    err = refused(capsys, tmp_path, [{"kind": "function", "function": f"{fn_file}:good", "url": "http://h:1/"}])
    assert "'reward.sources[0].url': is not read by kind function (only by http)" in err
    err = refused(capsys, tmp_path, [{"kind": "http"}])
    assert "'reward.sources[0].url': kind http needs it" in err


def test_model_source_must_have_one_output(capsys, tmp_path, tiny_classifier):
    err = refused(capsys, tmp_path, [{"kind": "model", "model": tiny_classifier}])
    assert "'reward.sources[0].model'" in err and "has 2 labels; kind model needs a scalar reward model" in err


def test_serve_reward_refuses_http_sources(capsys, tmp_path):
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump({"reward": {"sources": [{"kind": "http", "url": "http://127.0.0.1:9/"}]}}))
    assert main(["serve-reward", "--config", str(path), "--port", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "rlhf-ray: error: serve-reward serves classifier, model and function sources, not http ones "
        "(http:127.0.0.1:9): drop them from reward.sources in this config"
    )
