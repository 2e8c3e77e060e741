"""The embedded `arithmetic` task: problems generated deterministically with correct answers, train and
held-out splits that share no problem (not even a commuted one), the shipped reward functions on
hand-written completions, the accuracy row of `rlhf-ray eval`, and each bad dataset name as one line
and exit 2 before anything starts."""

from __future__ import annotations

import re

import pytest

from rlhf_ray.cli import main
from rlhf_ray.config.load import load_config
from rlhf_ray.data import arithmetic
from rlhf_ray.data.prompts import prompt_set
from rlhf_ray.errors import UserError
from rlhf_ray.models.policy import load_tokenizer
from rlhf_ray.rewards.arithmetic import exact_answer, format_reward
from rlhf_ray.stages import ppo as ppo_stage
from rlhf_ray.tools.evaluate import format_table

SMOKE = "configs/smoke.yaml"
QUESTION = re.compile(r"What is (\d+) ([-+*]) (\d+)\? Answer with the number only\.")


def _problem(row: dict) -> tuple[int, str, int]:
    ((message,),) = [row["prompt"]]
    assert message["role"] == "user"
    a, op, b = QUESTION.fullmatch(message["content"]).groups()
    return int(a), op, int(b)


def _canonical(a: int, op: str, b: int) -> tuple:
    """One key per problem: a + b and b + a are the same problem."""
    return (op, *sorted((a, b))) if op in "+*" else (op, a, b)


def test_same_name_same_rows_and_a_bigger_n_extends_a_smaller_one():
    ref = "arithmetic:ops=+-*,max=40,n=600"
    assert arithmetic.table(ref).to_pylist() == arithmetic.table(ref).to_pylist()
    small = arithmetic.table("arithmetic:ops=+-*,max=40,n=200").to_pylist()
    assert arithmetic.table(ref).to_pylist()[:200] == small
    other_seed = arithmetic.table("arithmetic:ops=+-*,max=40,n=200,seed=1").to_pylist()
    assert other_seed != small


def test_answers_are_correct_and_problems_distinct_and_in_range():
    rows = arithmetic.table("arithmetic:ops=+-*,max=30,n=1500").to_pylist()
    assert len(rows) == 1500
    seen = set()
    for row in rows:
        a, op, b = _problem(row)
        assert 1 <= a <= 30 and 1 <= b <= 30
        assert isinstance(row["answer"], str) and int(row["answer"]) == {"+": a + b, "-": a - b, "*": a * b}[op]
        seen.add(_canonical(a, op, b))
    assert len(seen) == 1500  # no problem twice, not even commuted
    assert {op for op, *_ in seen} == {"+", "-", "*"} and any(int(r["answer"]) < 0 for r in rows)


def test_every_problem_of_a_small_space_is_drawn_exactly_once():
    spec = arithmetic.parse("arithmetic:ops=-+,max=7")
    assert spec.distinct == 7 * 7 + 7 * 8 // 2
    got = [_canonical(*arithmetic.problem(spec, i)) for i in range(spec.distinct)]
    expected = {("-", a, b) for a in range(1, 8) for b in range(1, 8)}
    expected |= {("+", a, b) for a in range(1, 8) for b in range(a, 8)}
    assert len(got) == len(set(got)) and set(got) == expected
    full = arithmetic.table(f"arithmetic:ops=-+,max=7,n={spec.distinct}").to_pylist()
    assert {_canonical(*_problem(r)) for r in full} == expected


def test_train_and_heldout_splits_share_no_problem(smollm2):
    tokenizer = load_tokenizer(smollm2)
    cfg = load_config(SMOKE, ["data.dataset=arithmetic:ops=+-,max=40,n=2000"])
    train, heldout = prompt_set(cfg, tokenizer, "train"), prompt_set(cfg, tokenizer, "heldout")
    assert len(train) + len(heldout) == 2000 and 100 <= len(heldout) <= 300  # ~10% held out
    keys = [{_canonical(*_problem({"prompt": raw})) for raw in part.raws} for part in (train, heldout)]
    assert keys[0] and keys[1] and not keys[0] & keys[1]
    # the policy reads the problem through its chat template; the answer rides along to the reward functions
    assert train.texts[0].startswith("<|im_start|>") and train.raws[0][0]["content"] in train.texts[0]
    assert set(train.columns) == {"answer"} and len(train.columns["answer"]) == len(train)
    # a problem's split does not depend on the dataset's size
    small = prompt_set(load_config(SMOKE, ["data.dataset=arithmetic:ops=+-,max=40,n=500"]), tokenizer, "heldout")
    assert {_canonical(*_problem({"prompt": raw})) for raw in small.raws} <= keys[1]


def test_heldout_share_of_a_small_easy_space(smollm2):
    """heldout=40: a space of 210 problems (operands 1..20) still gives a held-out set to measure on."""
    tokenizer = load_tokenizer(smollm2)
    cfg = load_config(SMOKE, ["data.dataset=arithmetic:max=20,heldout=40"])
    train, heldout = prompt_set(cfg, tokenizer, "train"), prompt_set(cfg, tokenizer, "heldout")
    assert len(train) + len(heldout) == 210 and 60 <= len(heldout) <= 110
    keys = [{_canonical(*_problem({"prompt": raw})) for raw in part.raws} for part in (train, heldout)]
    assert len(keys[0] | keys[1]) == 210 and not keys[0] & keys[1]
    # the default share is every dataset's 10%
    default = prompt_set(load_config(SMOKE, ["data.dataset=arithmetic:max=20"]), tokenizer, "heldout")
    assert len(default) < 40 and {_canonical(*_problem({"prompt": raw})) for raw in default.raws} <= keys[1]


@pytest.mark.parametrize(
    "completion,answer,reward",
    [
        ("The answer is 42.", "42", 1.0),
        ("42", "42", 1.0),
        ("  42\n", 42, 1.0),
        ("4 2", "42", 0.0),
        ("-7", "-7", 1.0),
        ("\u22127", "-7", 1.0),  # a Unicode minus
        ("7", "-7", 0.0),
        ("17 - 25 = -8", "-8", 1.0),
        ("1,234 in all", "1234", 1.0),
        ("1,234", "1,234", 1.0),
        ("3,4", "34", 0.0),
        ("42.0", "42", 1.0),
        ("I think 40, no: 41", "41", 1.0),
        ("41, I think, not 42", "41", 0.0),  # the last number counts
        ("no idea", "5", 0.0),
        ("", "5", 0.0),
        ([{"role": "assistant", "content": "It is 12."}], "12", 1.0),  # TRL's conversational completions
    ],
)
def test_exact_answer(completion, answer, reward):
    assert exact_answer(["q"], [completion], answer=[answer]) == [reward]


def test_exact_answer_does_not_apply_without_a_numeric_answer():
    assert exact_answer(["q", "q", "q"], ["1", "2", "3"], answer=[None, "many", "3"], other=[1, 2, 3]) == [
        None,
        None,
        1.0,
    ]


@pytest.mark.parametrize(
    "completion,reward",
    [("42", 1.0), (" -7.\n", 1.0), ("1,234", 1.0), ("The answer is 42.", 0.0), ("4 2", 0.0), ("", 0.0), ("42!", 0.0)],
)
def test_format_reward(completion, reward):
    assert format_reward(["q"], [completion], answer=["42"]) == [reward]


def test_eval_table_leads_with_accuracy():
    def side(acc):
        return {"reward/mean": acc + 0.05, "reward/accuracy/mean": acc, "reward/format/mean": 0.5, "accuracy": acc}

    table = format_table({"reference": side(0.25), "policy": side(0.5)})
    assert table.splitlines()[2] == "| accuracy (exact answer) | 0.250 | 0.500 |"
    no_task = {"reward/mean": 1.0, "reward/classifier/mean": 1.0}
    assert "accuracy" not in format_table({"reference": no_task, "policy": no_task})


@pytest.fixture
def no_run(monkeypatch):
    monkeypatch.setattr(ppo_stage, "run", lambda *a, **k: pytest.fail("a bad input reached the PPO run"))


BAD = [
    ("size-0", "arithmetic:n=0", "n=0 yields no problems: set n to at least 1"),
    (
        "size-over-distinct",
        "arithmetic:ops=+,max=9,n=100",
        "more than the 45 distinct problems of ops=+, max=9: set n <= 45",
    ),
    ("no-heldout", "arithmetic:n=3", "n=3 leaves the held-out split empty"),
    ("unknown-key", "arithmetic:digits=2", "'digits=2' is not one of ops=, max=, n=, heldout=, seed="),
    ("bad-op", "arithmetic:ops=/", "ops='/' must list distinct operators among + - *"),
    ("max-0", "arithmetic:max=0", "max=0 must be between 1 and"),
    ("not-a-number", "arithmetic:n=many", "n='many' is not a whole number"),
    ("heldout-100", "arithmetic:heldout=100", "heldout=100 must be a percentage between 1 and 90"),
    ("twice", "arithmetic:n=5,n=6", "n= is given twice"),
]


@pytest.mark.parametrize("ref,expected", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_arithmetic_datasets_are_one_line_and_exit_2(tmp_path, capsys, no_run, ref, expected):
    run = tmp_path / "run"
    code = main(["ppo", "--config", SMOKE, "--run-dir", str(run), f"data.dataset={ref}"])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith("rlhf-ray: error: ") and expected in err, err
    assert not run.exists()  # nothing started


def test_smallest_size_with_both_splits_is_named():
    with pytest.raises(UserError, match=r"set n >= (\d+)") as info:
        arithmetic.table("arithmetic:n=3")
    need = int(re.search(r"set n >= (\d+)", str(info.value))[1])
    assert arithmetic.table(f"arithmetic:n={need}").num_rows == need
    with pytest.raises(UserError):
        arithmetic.table(f"arithmetic:n={need - 1}")
