"""A sweep's runs from --grid / --runs, and the keys that must be the same in every run."""

from __future__ import annotations

import pytest

from rlhf_ray.cli import main
from rlhf_ray.config.sweep import grid_runs, parse_grid, runs_file
from rlhf_ray.errors import UserError

SMOKE = "configs/smoke.yaml"


def test_grid_is_the_cartesian_product():
    runs = grid_runs(["ppo.lr=[1e-4,3e-4]", "run.seed=[0,1]"])
    assert runs == {
        "lr=1e-4,seed=0": ["ppo.lr=1e-4", "run.seed=0"],
        "lr=1e-4,seed=1": ["ppo.lr=1e-4", "run.seed=1"],
        "lr=3e-4,seed=0": ["ppo.lr=3e-4", "run.seed=0"],
        "lr=3e-4,seed=1": ["ppo.lr=3e-4", "run.seed=1"],
    }
    # the same last part twice: full keys name the runs; lists travel as YAML flow
    runs = grid_runs(["ppo.lr=[0.1]", "sft.lr=[0.2]", "model.target_modules=[[q_proj, v_proj]]"])
    assert list(runs.values()) == [["ppo.lr=0.1", "sft.lr=0.2", "model.target_modules=[q_proj, v_proj]"]]
    assert list(runs) == ["ppo.lr=0.1,sft.lr=0.2,model.target_modules=q_proj-v_proj"]


def test_grid_values_that_name_one_directory_are_refused():
    with pytest.raises(UserError, match="both be named"):
        grid_runs(["data.dataset=['a b', 'a-b']"])


@pytest.mark.parametrize("bad", ["ppo.lr", "ppo.lr=1e-4", "ppo.lr=[]", "=[1]"])
def test_bad_grid_is_one_line(bad):
    with pytest.raises(UserError, match="--grid"):
        parse_grid(bad)


def test_runs_file(tmp_path):
    path = tmp_path / "runs.yaml"
    path.write_text("low: [ppo.lr=1e-4]\nhigh:\n  - ppo.lr=3e-4\n  - run.seed=1\n")
    assert runs_file(path) == {"low": ["ppo.lr=1e-4"], "high": ["ppo.lr=3e-4", "run.seed=1"]}
    path.write_text("low: ppo.lr=1e-4\n")
    with pytest.raises(UserError, match="list of KEY=VALUE"):
        runs_file(path)


@pytest.mark.parametrize(
    "grid, key",
    [
        ("model.quant=[8bit,4bit]", "model.quant"),
        ("model.policy=[tiny-random-llama,smollm2-135m-instruct]", "model.policy"),
        ("cluster.actor_cpus=[0.25,0.5]", "cluster.actor_cpus"),
    ],
)
def test_a_key_that_changes_the_base_is_refused_in_one_line(grid, key, tmp_path, capsys):
    code = main(["sweep", "--config", SMOKE, "--run-dir", str(tmp_path / "sw"), "--grid", grid])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert f"'{key}'" in err and "cannot differ between the runs of a sweep" in err
    assert not (tmp_path / "sw").exists()  # refused before anything is written


def test_a_sweep_without_runs_or_with_a_bad_common_key_is_refused(tmp_path, capsys):
    assert main(["sweep", "--config", SMOKE, "--run-dir", str(tmp_path / "sw")]) == 2
    assert "--grid" in capsys.readouterr().err
    assert main(["sweep", "--run-dir", str(tmp_path / "sw"), "ppo.lr=-1"]) == 2  # the common config first
    assert "config key 'ppo.lr'" in capsys.readouterr().err
    assert not (tmp_path / "sw").exists()
