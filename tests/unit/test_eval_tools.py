"""Fast checks (no models) for the eval/report helpers, progress lines and the new config rules."""

from __future__ import annotations

import importlib.util
import math

import pytest

from rlhf_ray.config.load import load_config
from rlhf_ray.errors import ConfigError, UserError
from rlhf_ray.runtime.metrics import LineProgress
from rlhf_ray.tools.evaluate import distinct_n, summarize


def test_distinct_n_counts_unique_word_ngrams():
    texts = ["a b a b", "A b c"]
    # unigrams: a b a b a b c -> 3 unique / 7; bigrams: ab ba ab ab bc -> 3 unique / 5
    assert distinct_n(texts, 1) == pytest.approx(3 / 7)
    assert distinct_n(texts, 2) == pytest.approx(3 / 5)
    assert distinct_n(["one"], 2) == 0.0


def test_summary_positive_rate_uses_the_score_kind_threshold():
    rows = {
        "score": [0.4, 0.6, -1.0, 2.0],
        "kl": [1.0, 3.0, 0.0, 0.0],
        "length": [2, 4, 6, 8],
        "response": ["x", "y", "z", "w"],
    }
    margin = summarize(rows, "logit_margin")
    assert margin["reward/positive_rate"] == 0.75 and margin["reward/mean"] == pytest.approx(0.5)
    assert margin["kl/to_reference"] == 1.0 and margin["response/length_mean"] == 5.0
    assert summarize(rows, "prob")["reward/positive_rate"] == 0.5  # probabilities: > 0.5 is positive
    logs = {**rows, "score": [math.log(0.4), math.log(0.6), math.log(0.2), math.log(0.9)]}
    assert summarize(logs, "log_prob")["reward/positive_rate"] == 0.5  # their logs: > log 0.5


def test_line_progress_prints_one_line_per_step(capsys):
    bar = LineProgress(range(3, 5), "ppo", total=4, initial=2)
    for _ in bar:
        bar.set_postfix(reward="1.000")
    lines = capsys.readouterr().err.strip().splitlines()
    assert [ln.split(" [")[0] for ln in lines] == ["ppo 3/4", "ppo 4/4"] and lines[-1].endswith("reward=1.000")
    assert "\r" not in "".join(lines)


def test_truncated_sampling_is_refused_and_sinks_need_their_package():
    for override in ("generate.top_k=50", "generate.top_p=0.9"):
        with pytest.raises(ConfigError, match="truncated sampling"):
            load_config("configs/smoke.yaml", [override])
    with pytest.raises(ConfigError, match="eval.num_prompts"):
        load_config(None, ["eval.num_prompts=0"])
    if importlib.util.find_spec("wandb") is None:
        with pytest.raises(ConfigError, match="'wandb' package"):
            load_config(None, ["logging.wandb_project=demo"])


def test_missing_run_or_adapter_is_a_user_error(tmp_path):
    from rlhf_ray.tools.runs import find_adapter

    with pytest.raises(UserError, match="no such run"):
        find_adapter(tmp_path / "nope")
    (tmp_path / "checkpoints").mkdir()
    with pytest.raises(UserError, match="no complete checkpoint"):
        find_adapter(tmp_path)
