"""Reward models from preference pairs without Ray: the Bradley-Terry loss by hand, pair sets (columns,
splits, the chosen == rejected rule, bad input as one line with exit 2), imdb-pairs, and the config
(per-objective defaults, the cache key, the default source)."""

from __future__ import annotations

import json
import math
import re
import statistics
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from rlhf_ray.algo.preference import bradley_terry_loss
from rlhf_ray.cli import main
from rlhf_ray.config.load import load_config
from rlhf_ray.config.schema import Config
from rlhf_ray.data.pairs import file_pairs, imdb_pairs, load_pairs
from rlhf_ray.errors import ConfigError, UserError
from rlhf_ray.stages.store import stage_dir, stage_inputs


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def pair_rows(n: int, prompt: bool = True) -> list[dict]:
    rows = [{"chosen": f" a kind answer {i}", "rejected": f" a rude answer {i}"} for i in range(n)]
    return [{"prompt": f"question {i}:", **row} for i, row in enumerate(rows)] if prompt else rows


# ----------------------------------------------------------------------------- the loss


def test_bradley_terry_loss_on_two_pairs_by_hand():
    chosen = torch.tensor([2.0, 0.0], requires_grad=True)
    rejected = torch.tensor([1.0, 1.0], requires_grad=True)
    loss, stats = bradley_terry_loss(chosen, rejected)
    # margins 1 and -1: -log sigmoid(1) = log(1 + e^-1), -log sigmoid(-1) = log(1 + e)
    expected = (math.log(1 + math.exp(-1)) + math.log(1 + math.e)) / 2
    assert loss.item() == pytest.approx(expected, abs=1e-6)  # 0.8132617
    assert stats["accuracy"].item() == 0.5 and stats["margin"].item() == 0.0
    loss.backward()
    # d loss / d r_chosen = -sigmoid(-margin) / B; the rejected side gets the opposite
    sig = 1 / (1 + math.exp(-1))
    assert chosen.grad.tolist() == pytest.approx([-(1 - sig) / 2, -sig / 2], abs=1e-6)
    assert rejected.grad.tolist() == pytest.approx([(1 - sig) / 2, sig / 2], abs=1e-6)


def test_bradley_terry_loss_stays_finite_on_a_huge_wrong_margin_and_counts_ties_as_wrong():
    loss, stats = bradley_terry_loss(torch.tensor([-100.0, 3.0]), torch.tensor([100.0, 3.0]))
    assert loss.item() == pytest.approx((200 + math.log(2)) / 2, rel=1e-6)
    assert stats["accuracy"].item() == 0.0


# ----------------------------------------------------------------------------- pair sets


def test_pairs_read_prompt_plus_response_joined_as_is(tmp_path):
    pairs = file_pairs(str(write_jsonl(tmp_path / "p.jsonl", pair_rows(3))))
    chosen, rejected = pairs.texts()
    assert chosen[1] == "question 1: a kind answer 1" and rejected[1] == "question 1: a rude answer 1"
    no_prompt = file_pairs(str(write_jsonl(tmp_path / "q.jsonl", pair_rows(3, prompt=False))))
    assert no_prompt.texts()[0][2] == " a kind answer 2"  # prompt is optional: the response alone


def test_splits_are_seeded_samples_and_do_not_move_when_rows_are_reordered(tmp_path):
    rows = pair_rows(400)
    a = load_pairs(str(write_jsonl(tmp_path / "a.jsonl", rows)), 1000, 1000, seed=0)
    b = load_pairs(str(write_jsonl(tmp_path / "b.jsonl", rows[::-1])), 1000, 1000, seed=0)
    assert 20 <= len(a.heldout) <= 60 and len(a.train) + len(a.heldout) == 400  # ~10% held out
    assert set(a.heldout.chosen) == set(b.heldout.chosen)
    assert not set(a.heldout.chosen) & set(a.train.chosen)
    small = load_pairs(str(tmp_path / "a.jsonl"), 50, 10, seed=1)
    assert len(small.train) == 50 and len(small.heldout) == 10
    assert small == load_pairs(str(tmp_path / "a.jsonl"), 50, 10, seed=1)  # same seed, same sample


def test_parquet_and_csv_pair_sets_read_the_same_rows(tmp_path):
    rows = pair_rows(60)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "p.parquet")
    csv = "prompt,chosen,rejected\n" + "".join(f'"{r["prompt"]}","{r["chosen"]}","{r["rejected"]}"\n' for r in rows)
    (tmp_path / "p.csv").write_text(csv)
    expected = file_pairs(str(write_jsonl(tmp_path / "p.jsonl", rows)))
    assert file_pairs(str(tmp_path / "p.parquet")) == expected == file_pairs(str(tmp_path / "p.csv"))


def test_rows_whose_chosen_equals_rejected_are_skipped_and_counted(tmp_path, caplog):
    rows = pair_rows(300)
    for row in rows[:7]:
        row["rejected"] = row["chosen"]
    data = load_pairs(str(write_jsonl(tmp_path / "p.jsonl", rows)), 1000, 1000, seed=0)
    assert data.skipped == 7 and len(data.train) + len(data.heldout) == 293
    assert all(c != r for c, r in zip(data.train.chosen, data.train.rejected))
    assert "skipped 7 pair(s) whose chosen equals their rejected" in caplog.text


def test_a_pair_set_without_chosen_rejected_names_its_columns(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "q", "response": "a", "label": 1}] * 40)
    with pytest.raises(UserError, match=r"no 'chosen' or 'rejected' column \(columns: prompt, response, label\)"):
        load_pairs(str(path), 10, 10, seed=0)
    only_chosen = write_jsonl(tmp_path / "c.jsonl", [{"chosen": "a", "other": "b"}] * 40)
    with pytest.raises(UserError, match=r"no 'rejected' column \(columns: chosen, other\)"):
        load_pairs(str(only_chosen), 10, 10, seed=0)


def test_message_list_pairs_are_refused_in_one_line(tmp_path):
    rows = [{"chosen": [{"role": "assistant", "content": "a"}], "rejected": [{"role": "assistant", "content": "b"}]}]
    with pytest.raises(UserError, match="column 'chosen' holds .* not text"):
        load_pairs(str(write_jsonl(tmp_path / "p.jsonl", rows * 40)), 10, 10, seed=0)


def test_a_set_left_empty_after_skipping_is_one_line(tmp_path):
    rows = [{"prompt": "q", "chosen": f"same {i}", "rejected": f"same {i}"} for i in range(50)]
    with pytest.raises(UserError, match=r"no training pairs left \(50 row\(s\), 50 skipped because chosen equals"):
        load_pairs(str(write_jsonl(tmp_path / "p.jsonl", rows)), 10, 10, seed=0)


def test_a_set_with_no_held_out_pair_is_one_line(tmp_path):
    with pytest.raises(UserError, match="none of its 3 usable pair\\(s\\) falls in the held-out split"):
        load_pairs(str(write_jsonl(tmp_path / "p.jsonl", pair_rows(3))), 10, 10, seed=0)


BAD_SETS = {
    "no_chosen": (
        [{"prompt": "q", "answer": "a"}] * 40,
        "has no 'chosen' or 'rejected' column (columns: prompt, answer)",
    ),
    "all_identical": ([{"chosen": f"x{i}", "rejected": f"x{i}"} for i in range(40)], "40 skipped because chosen"),
    "empty_file": ([], "cannot be read (Empty JSON file)"),
}


@pytest.mark.parametrize("case", sorted(BAD_SETS))
def test_the_reward_command_refuses_a_bad_pair_set_in_one_line_before_ray(tmp_path, capsys, case):
    rows, message = BAD_SETS[case]
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    argv = ["reward", "--run-dir", str(tmp_path / "run"), "reward.objective=pairwise", f"reward.dataset={path}"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not (tmp_path / "run" / "DONE.json").exists()


# ----------------------------------------------------------------------------- imdb-pairs


@pytest.fixture(scope="module")
def imdb():
    from rlhf_ray.data.prompts import load_text_dataset

    labels = {}
    for split in ("train", "test"):
        table = load_text_dataset("imdb", split)
        labels.update(zip(table["text"].to_pylist(), table["label"].to_pylist()))
    return labels, imdb_pairs("train"), imdb_pairs("test")


def test_imdb_pairs_put_a_positive_review_against_a_negative_one_of_about_its_length(imdb):
    labels, train, heldout = imdb
    assert len(train) > 10_000 and len(heldout) > 1_000
    for pairs in (train, heldout):
        assert set(pairs.prompts) == {""}
        assert {labels[t] for t in pairs.chosen} == {1} and {labels[t] for t in pairs.rejected} == {0}
        gaps = [abs(len(c) - len(r)) / max(len(c), len(r)) for c, r in zip(pairs.chosen, pairs.rejected)]
        assert statistics.median(gaps) < 0.1  # length alone does not tell chosen from rejected
    assert not (set(train.chosen) | set(train.rejected)) & (set(heldout.chosen) | set(heldout.rejected))
    assert imdb_pairs("test") == heldout  # deterministic: no seed involved


def test_imdb_pairs_is_the_pairwise_default_and_samples_by_seed(imdb):
    r = load_config(None, ["reward.objective=pairwise"]).reward.resolved()
    assert (r.dataset, r.train_size, r.eval_size) == ("imdb-pairs", 800, 250)
    data = load_pairs(r.dataset, 20, 10, seed=3)
    assert len(data.train) == 20 and len(data.heldout) == 10 and data.skipped == 0
    assert set(data.heldout.chosen) <= set(imdb[2].chosen)


# ----------------------------------------------------------------------------- config


def test_classifier_cache_key_is_unchanged_and_pairwise_gets_its_own_entry():
    classifier = Config()
    inputs = stage_inputs(classifier, "reward")["reward"]
    # the key a classifier entry had before reward.objective (and per-objective defaults) existed
    assert "objective" not in inputs and (inputs["dataset"], inputs["train_size"], inputs["eval_size"]) == (
        "imdb",
        1600,
        500,
    )
    explicit = load_config(None, ["reward.dataset=imdb", "reward.train_size=1600", "reward.eval_size=500"])
    assert stage_dir(explicit, "reward") == stage_dir(classifier, "reward")
    pairwise = load_config(None, ["reward.objective=pairwise"])
    assert stage_inputs(pairwise, "reward")["reward"]["objective"] == "pairwise"
    assert stage_dir(pairwise, "reward") != stage_dir(classifier, "reward")


def test_pairwise_default_source_is_the_scalar_model():
    (src,) = load_config(None, ["reward.objective=pairwise", "reward.model=/tmp"]).reward.source_list()
    assert (src.kind, src.resolved_name(), src.model) == ("model", "pairwise", "/tmp")
    assert [s.kind for s in Config().reward.source_list()] == ["classifier"]


@pytest.mark.parametrize(
    "overrides, key",
    [
        (["reward.objective=pairwise", "reward.dataset=imdb"], "reward.dataset"),
        (["reward.dataset=imdb-pairs"], "reward.dataset"),
        (["reward.objective=pairwise", "reward.score=prob"], "reward.score"),
        (["reward.train_size=0"], "reward.train_size"),
        (["reward.objective=pairwise", "reward.eval_size=-1"], "reward.eval_size"),
        (["reward.objective=pairwise", "reward.dataset=./missing.jsonl"], "reward.dataset"),
        (["reward.objective=pairwise", "reward.sources=[{kind: classifier}]"], "reward.sources[0].model"),
        (["reward.sources=[{kind: model}]"], "reward.sources[0].model"),
    ],
)
def test_pairwise_config_mistakes_name_the_key(overrides, key):
    with pytest.raises(ConfigError, match=re.escape(f"config key '{key}'")):
        load_config(None, overrides)


def test_a_model_source_without_a_model_is_the_pairwise_stage_output():
    cfg = load_config(None, ["reward.objective=pairwise", "reward.sources=[{kind: model, weight: 0.5}]"])
    assert cfg.reward.source_list()[0].resolved_name() == "pairwise"
