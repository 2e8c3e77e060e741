"""eval, generate and report on the output of a real smoke PPO run (tiny models, shared local Ray)."""

from __future__ import annotations

import contextlib
import io
import json
import math

import pyarrow.parquet as pq
import pytest

from rlhf_ray.cli import main

pytestmark = pytest.mark.usefixtures("ray_session")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
EVAL_PROMPTS = 12  # at 8 tokens each: enough draws for the trained adapter to change some of them
# eval.judges: the shipped VADER function and a classifier judge (the tiny classifier, its default cut)
JUDGES = (
    "eval.judges=[{kind: function, name: vader, function: 'rlhf_ray.rewards.lexicon:vader', threshold: 0.05}, "
    "{kind: classifier, name: tiny, model: tiny-random-bert}]"
)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("eval") / "run"
    import importlib.util

    tensorboard = importlib.util.find_spec("tensorboard") is not None
    # ppo.lr 20x the smoke config's: after two iterations at 1e-3 the LoRA changed 1 of 24 held-out
    # samples (0 of 12), so whether the eval's samples differ from the reference's was luck of the seeds
    args = ["--config", "configs/smoke.yaml", "--run-dir", str(run), "ppo.lr=0.02"]
    assert main(["ppo", *args, f"logging.tensorboard={tensorboard}"]) == 0
    return run


@pytest.fixture(scope="module")
def evaluated(smoke_run) -> str:
    """`eval` of the smoke run, once for every test that needs eval.json: its printed table."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["eval", str(smoke_run), f"eval.num_prompts={EVAL_PROMPTS}", "eval.batch_size=4", JUDGES]) == 0
    return out.getvalue()


def test_tensorboard_sink(smoke_run):
    pytest.importorskip("tensorboard")
    events = list((smoke_run / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(smoke_run / "tensorboard"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("reward/mean")] == [1, 2]


def test_eval_scores_reference_and_policy_on_heldout_prompts(smoke_run, evaluated):
    assert "| positive rate |" in evaluated
    result = json.loads((smoke_run / "eval.json").read_text())
    assert result["num_prompts"] == EVAL_PROMPTS and result["adapter"].endswith("iter-000002/policy.safetensors")
    for name in ("reference", "policy"):
        assert all(math.isfinite(v) for v in result[name].values()), result[name]
        assert 0 <= result[name]["reward/positive_rate"] <= 1 and result[name]["response/length_mean"] > 0
    assert result["reference"]["kl/to_reference"] == 0.0 and result["policy"]["kl/to_reference"] != 0.0
    table = pq.read_table(smoke_run / "eval_responses.parquet").to_pylist()
    assert [r["model"] for r in table] == ["reference"] * EVAL_PROMPTS + ["policy"] * EVAL_PROMPTS
    assert [r["prompt"] for r in table[:EVAL_PROMPTS]] == [
        r["prompt"] for r in table[EVAL_PROMPTS:]
    ]  # the same prompts for both
    # the trained adapter changed what is sampled from the same seeds (3 of the 12 responses here)
    assert [r["response"] for r in table[:EVAL_PROMPTS]] != [r["response"] for r in table[EVAL_PROMPTS:]]


def test_eval_reports_each_judge_beside_the_reward(smoke_run, evaluated):
    from rlhf_ray.rewards.lexicon import vader

    assert "| judge vader: positive rate (> 0.05) |" in evaluated and "| judge tiny: mean |" in evaluated
    result = json.loads((smoke_run / "eval.json").read_text())
    assert [(j["name"], j["kind"], j["threshold"]) for j in result["judges"]] == [
        ("vader", "function", 0.05),
        ("tiny", "classifier", 0.0),  # the smoke config's reward.score is logit_margin: margin 0
    ]
    table = pq.read_table(smoke_run / "eval_responses.parquet").to_pylist()
    for name in ("reference", "policy"):
        rows = [r for r in table if r["model"] == name]
        values = vader([r["prompt"] for r in rows], [r["response"] for r in rows])  # the whole review
        assert [r["judge/vader"] for r in rows] == pytest.approx(values)
        assert result[name]["judge/vader/mean"] == pytest.approx(sum(values) / len(values))
        assert result[name]["judge/vader/positive_rate"] == sum(v > 0.05 for v in values) / len(values)
        tiny = [r["judge/tiny"] for r in rows]
        assert result[name]["judge/tiny/positive_rate"] == sum(v > 0 for v in tiny) / len(tiny)
        # a judge is never part of the reward: the combined score is the run's own classifier's
        assert "score/vader" not in rows[0] and result[name]["reward/mean"] is not None


def test_generate_with_and_without_the_trained_adapter(smoke_run, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("This movie was\n\nThe plot\n")
    assert main(["generate", "--adapter", str(smoke_run), "--prompts-file", str(prompts), "--prompt", "I loved"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(lines[-1])
    assert summary["samples"] == 3 and summary["adapter"].endswith("policy.safetensors")
    assert lines[0].startswith("I loved") and sum(line == "---" for line in lines) == 3
    assert main(["generate", "--prompt", "This movie was", "--samples", "2", "--config", "configs/smoke.yaml"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == {"adapter": None, "samples": 2}
    assert main(["generate", "--config", "configs/smoke.yaml"]) == 2  # no prompt: one clear line
    assert "no prompts" in capsys.readouterr().err


def test_report_writes_plot_and_markdown(smoke_run, evaluated):
    assert main(["report", str(smoke_run)]) == 0
    assert (smoke_run / "metrics.png").read_bytes()[:8] == PNG_MAGIC
    text = (smoke_run / "report.md").read_text()
    for heading in ("## Config", "## Final figures", "## Held-out evaluation", "## Samples"):
        assert heading in text
    assert "| `reward/mean` |" in text and "![metrics](metrics.png)" in text
    assert "| positive rate |" in text and "iteration 1 (policy v0 = reference)" in text  # eval.json's table
    assert (
        "| judge vader: positive rate (> 0.05) |" in text and "Judges: `vader` (rlhf_ray.rewards.lexicon:vader)" in text
    )
