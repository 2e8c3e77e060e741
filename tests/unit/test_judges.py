"""eval.judges: the shipped VADER judge's values, the judges' config checks (one line, exit 2) and the
eval figures they add (mean and positive rate per judge, beside the training reward). No models."""

from __future__ import annotations

import math

import pytest
import yaml

from rlhf_ray.cli import main
from rlhf_ray.config.load import load_config
from rlhf_ray.config.sources import RewardSourceConfig
from rlhf_ray.errors import ConfigError
from rlhf_ray.rewards.base import RewardBatch
from rlhf_ray.rewards.lexicon import VADER, compound, vader, vader_response
from rlhf_ray.rewards.sources import RewardSources, check_judges, judge_specs
from rlhf_ray.tools.evaluate import format_table, summarize

POSITIVE = [
    "This movie was wonderful: a brilliant cast, a moving story, I loved every minute.",
    "One of the best films of the year, funny and beautifully made.",
    "A great, great performance. Highly recommended!",
]
NEGATIVE = [
    "This movie was terrible: a boring plot, awful acting, a complete waste of time.",
    "The worst film I have seen in years, stupid and painful to watch.",
    "I hated it. Dull, ugly and badly written.",
]
VADER_JUDGE = {"kind": "function", "name": "vader", "function": VADER, "threshold": 0.05}


def test_vader_scores_clearly_positive_and_negative_reviews_apart():
    pos, neg = compound(POSITIVE), compound(NEGATIVE)
    assert all(v > 0.5 for v in pos), pos  # compound in [-1, 1]; VADER calls >= 0.05 positive
    assert all(v < -0.5 for v in neg), neg
    assert compound(["The film is two hours long and was shot in Canada."]) == [0.0]  # no sentiment words
    assert compound(["The movie was not good."])[0] < 0  # negation flips "good"


def test_vader_reads_prompt_and_completion_or_the_completion_alone():
    prompts = ["This movie was", [{"role": "user", "content": "Review it:"}]]
    completions = [" a wonderful surprise, I loved it.", " awful and boring."]
    joined = vader(prompts=prompts, completions=completions)
    assert joined == compound(["This movie was a wonderful surprise, I loved it.", "Review it: awful and boring."])
    assert vader_response(prompts=["I hated the start, but"], completions=[" fine."]) == compound([" fine."])
    # a negative opening read with its completion pulls the score down: the whole review counts
    assert vader(prompts=["I hated the start, but"], completions=[" fine."])[0] < compound([" fine."])[0]


def test_function_judge_is_built_and_scored_like_a_reward_source(tmp_path):
    cfg = load_config(None, [f"run.cache_dir={tmp_path}", f"eval.judges=[{VADER_JUDGE}]"])
    check_judges(cfg)
    (spec,) = judge_specs(cfg)
    assert (spec.name, spec.key, spec.function.spec) == ("vader", "eval.judges[0]", VADER)
    values = RewardSources([spec], cfg).values(RewardBatch(["", ""], [POSITIVE[0], NEGATIVE[0]]))
    assert values["vader"].tolist() == pytest.approx(compound([POSITIVE[0], NEGATIVE[0]]))


def test_positive_threshold_defaults():
    assert RewardSourceConfig(kind="function", function="m:f", threshold=0.05).positive_threshold("prob") == 0.05
    assert RewardSourceConfig(kind="function", function="m:f").positive_threshold("prob") == 0.0
    assert RewardSourceConfig(kind="classifier", model="x").positive_threshold("prob") == 0.5
    assert RewardSourceConfig(kind="classifier", model="x").positive_threshold("log_prob") == math.log(0.5)
    assert RewardSourceConfig(kind="classifier", model="x").positive_threshold("logit_margin") == 0.0


def test_summary_and_table_report_each_judge_beside_the_reward():
    rows = {
        "score": [0.4, 0.6, -1.0, 2.0],
        "kl": [0.0] * 4,
        "length": [4] * 4,
        "response": ["a", "b", "c", "d"],
        "judge/vader": [0.9, 0.05, None, -0.5],  # None: the judge returned no value for that sample
    }
    out = summarize(rows, "logit_margin", {"vader": 0.05})
    assert out["judge/vader/mean"] == pytest.approx(0.15)
    assert out["judge/vader/positive_rate"] == pytest.approx(1 / 3)  # above 0.05, over the 3 it scored
    assert summarize(rows, "logit_margin")["judge/vader/positive_rate"] == pytest.approx(2 / 3)  # default cut 0
    result = {
        "reference": summarize(rows, "logit_margin", {"vader": 0.05}),
        "policy": out,
        "judges": [{"name": "vader", "kind": "function", "threshold": 0.05}],
    }
    lines = format_table(result).splitlines()
    labels = [line.split(" | ")[0].lstrip("| ") for line in lines[2:]]
    assert labels[:4] == ["mean reward", "positive rate", "judge vader: mean", "judge vader: positive rate (> 0.05)"]
    assert "| judge vader: positive rate (> 0.05) | 0.333 | 0.333 |" in lines


def test_default_config_ships_the_vader_judge():
    cfg = load_config("configs/default.yaml")
    (judge,) = cfg.eval.judges
    assert (judge.kind, judge.function, judge.positive_threshold(cfg.reward.score)) == ("function", VADER, 0.05)


# ---------------------------------------------------------------------------------------- bad input


def refused(capsys, tmp_path, judges: list, sources: list | None = None) -> str:
    """`rlhf-ray config` on a config with these judges: exit 2 and one line naming the key."""
    config = yaml.safe_load(open("configs/smoke.yaml"))
    config["eval"] = {"judges": judges}
    if sources is not None:
        config["reward"]["sources"] = sources
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    code = main(["config", "--config", str(path)])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("rlhf-ray: error: ") and "Traceback" not in err, err
    return err


@pytest.mark.parametrize(
    "judges, message",
    [
        ([{"kind": "classifier"}], "'eval.judges[0].model': a judge needs its own model"),
        ([{"kind": "model"}], "'eval.judges[0].model': a judge needs its own model"),
        ([{"kind": "function"}], "'eval.judges[0].function': kind function needs it"),
        ([{"kind": "http"}], "'eval.judges[0].url': kind http needs it"),
        ([{**VADER_JUDGE, "weight": 2.0}], "'eval.judges[0].weight': a judge is reported on its own"),
        ([{**VADER_JUDGE, "threshold": float("nan")}], "'eval.judges[0].threshold': must be a finite number"),
        ([{**VADER_JUDGE, "url": "http://h:1/"}], "'eval.judges[0].url': is not read by kind function"),
        ([{**VADER_JUDGE, "threshold": "high"}], "'eval.judges[0].threshold'"),
        ([{"kind": "function", "function": "not-a-spec"}], "'eval.judges[0].function': must look like"),
        ([{"kind": "http", "url": "ftp://h/score"}], "'eval.judges[0].url': must be an http(s) URL"),
        (
            [{"kind": "classifier", "model": "./no/such/dir"}],
            "'eval.judges[0].model': path ./no/such/dir does not exist",
        ),
        ([VADER_JUDGE, VADER_JUDGE], "'eval.judges[1].name': duplicate judge name 'vader' (also eval.judges[0])"),
        ([{"kind": "vader"}], "'eval.judges[0].kind': must be one of classifier, model, function, http"),
        ([{**VADER_JUDGE, "treshold": 0.1}], "unknown key; did you mean eval.judges[0].threshold?"),
    ],
)
def test_bad_judges_are_refused_in_one_line(capsys, tmp_path, judges, message):
    assert message in refused(capsys, tmp_path, judges)


def test_threshold_is_a_judge_key_only(capsys, tmp_path):
    err = refused(capsys, tmp_path, [], sources=[{"kind": "classifier", "threshold": 0.5}])
    assert "'reward.sources[0].threshold': is read only by eval.judges" in err


def test_a_judge_function_that_does_not_import_is_refused_before_eval_loads_a_model(tmp_path):
    cfg = load_config(None, ["eval.judges=[{kind: function, function: 'no_such_pkg_xyz.judges:fn'}]"])
    with pytest.raises(ConfigError, match=r"'eval.judges\[0\].function'.*no_such_pkg_xyz.judges cannot be imported"):
        check_judges(cfg)
    missing = tmp_path / "judges.py"
    missing.write_text("def other(prompts, completions, **columns):\n    return [0.0] * len(completions)\n")
    cfg = load_config(
        None, [f"run.cache_dir={tmp_path}", f"eval.judges=[{{kind: function, function: '{missing}:fn'}}]"]
    )
    with pytest.raises(ConfigError, match=r"'eval.judges\[0\].function'.*has no function 'fn'"):
        check_judges(cfg)


def test_a_model_judge_must_have_one_output(tiny_classifier):
    cfg = load_config(None, [f"eval.judges=[{{kind: model, model: '{tiny_classifier}'}}]"])
    with pytest.raises(ConfigError, match=r"'eval.judges\[0\].model'.*has 2 labels"):
        check_judges(cfg)
