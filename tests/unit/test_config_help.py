"""Self-documenting config (generated from config.py itself) and one-line hints for habits from
other tools."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import pytest

from rlhf_ray.cli import STAGE_SECTIONS, main
from rlhf_ray.config.help import explain, field_comments, key_docs, sections, suggest
from rlhf_ray.config.load import load_config
from rlhf_ray.config.schema import Config
from rlhf_ray.errors import ConfigError


def test_every_section_and_every_key_has_a_help_line():
    missing = [name for name, (_, help_text) in sections(Config).items() if not help_text]
    missing += [doc.key for name in sections(Config) for doc in key_docs(Config, name) if not doc.help.strip()]
    assert not missing, f"add a `# help` comment above these fields in rlhf_ray/config/schema.py: {missing}"


@dataclass
class _Sample:
    # First line of a block
    # and its second line.
    joined: int = 1
    bare: str = "x"  # a trailing comment counts when there is no block above
    # Stands alone.

    after_blank: float = 0.5
    # A '#' inside a string is no comment: "x # y"
    listed: list[str] = field(default_factory=lambda: ["a # b", "c"])


def test_comment_parser_joins_blocks_and_ignores_what_is_not_directly_above():
    helps = field_comments(_Sample)
    assert helps["joined"] == "First line of a block and its second line."
    assert helps["bare"] == "a trailing comment counts when there is no block above"
    assert helps["after_blank"] == ""  # a blank line separates a comment from the field
    assert helps["listed"] == "A '#' inside a string is no comment: \"x # y\""


def test_types_and_defaults_come_from_the_fields():
    docs = {d.key: d for d in key_docs(Config, "algo")}
    assert docs["algo.advantage"].type == "gae|grpo|rloo" and docs["algo.advantage"].default == "gae"
    run = {d.key: d for d in key_docs(Config, "run")}
    assert run["run.cache_dir"].type == "str|null" and run["run.cache_dir"].default == "null"
    assert {d.key: d for d in key_docs(Config, "pipeline")}["pipeline.stages"].default == "sft,merge,reward,ppo"
    # every key a default Config has is listed, in declaration order
    for name in sections(Config):
        keys = [d.key.split(".")[1] for d in key_docs(Config, name)]
        assert keys == [f.name for f in dataclasses.fields(getattr(Config(), name))]


def test_stage_help_lists_every_key_of_its_sections(capsys):
    for command, names in STAGE_SECTIONS.items():
        with pytest.raises(SystemExit):
            main([command, "--help"])
        out = capsys.readouterr().out
        for name in names:
            for doc in key_docs(Config, name):
                assert f"{doc.key}: {doc.type} = {doc.default}" in out, (command, doc.key)
    assert "sft.lr" not in explain(Config, STAGE_SECTIONS["ppo"])  # only the sections a stage reads


def test_config_explain_shows_current_values_and_rejects_unknown_sections(capsys):
    assert main(["config", "--explain", "ppo.lr", "algo", "ppo.lr=0.003"]) == 0
    out = capsys.readouterr().out
    assert "ppo.lr: float = 0.0001  (now 0.003)" in out and "algo.kl_kind" in out and "ppo.epochs" not in out
    assert main(["config", "--explain", "pp"]) == 2
    assert "did you mean ppo?" in capsys.readouterr().err


HINTS = [
    (["ppo", "--ppo.iterations=3"], ["write ppo.iterations=3"]),
    (["ppo", "--ppo.iterations", "3"], ["write ppo.iterations=3"]),
    (["ppo", "--lr=1e-4"], ["write ppo.lr=1e-4", "reward.lr", "sft.lr"]),
    (["sft", "--learning-rate", "1e-4"], ["write sft.lr=1e-4"]),
    (["ppo", "lr=1e-4"], ["config key 'lr'", "ppo.lr", "sft.lr", "reward.lr"]),
    (["ppo", "ppo.learning_rate=1e-4"], ["did you mean ppo.lr?"]),
    (["ppo", "ppo.num_generations=4"], ["did you mean algo.group_size?"]),
    (["ppo", "ppo.kl_coef=0.1"], ["did you mean algo.kl_coef?"]),
    (["ppo", "ppo.lrr=0.1"], ["did you mean ppo.lr?"]),
    (
        ["ppo", "ppo.batch_size=15"],
        [
            "config key 'ppo.batch_size'",
            "ppo.batch_size (15) must be divisible by ppo.mini_batch_size (8)",
            "a multiple of 8 (8 or 16)",
            "divisor of 15 (1, 3, 5, 15)",
        ],
    ),
    (["ppo", "ppo.mini_batch_size=5"], ["config key 'ppo.mini_batch_size'"]),
    (["ppo", "cluster.num_generators=3"], ["config key 'cluster.num_generators'", "equal shard"]),
]


@pytest.mark.parametrize("argv,expected", HINTS)
def test_habits_from_other_tools_get_a_one_line_hint(argv, expected, capsys, tmp_path):
    assert main([*argv, "--run-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("rlhf-ray: error:"), err
    for text in expected:
        assert text in err, (text, err)
    assert not (tmp_path / "run").exists()


def test_divisibility_blames_the_key_the_user_set_last(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("ppo:\n  batch_size: 12\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, ["ppo.mini_batch_size=5"])  # the override is the newer choice
    assert info.value.key == "ppo.mini_batch_size"
    with pytest.raises(ConfigError) as info:
        load_config(None, ["ppo.grad_accum=3"])  # set by nobody else: the default divisor is not blamed
    assert info.value.key == "ppo.grad_accum"
    path.write_text("ppo:\n  mini_batch_size: 5\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, ["ppo.batch_size=12"])
    assert info.value.key == "ppo.batch_size"


def test_suggest_knows_sections_and_closeness():
    assert suggest(Config, "ppp") == ["ppo"]
    assert suggest(Config, "max_steps") == ["sft.max_steps", "ppo.iterations"]
    assert suggest(Config, "ppo.nothing_like_it") == []
