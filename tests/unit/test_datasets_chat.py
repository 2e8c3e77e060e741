"""Chat prompts: rendering checked against the tokenizer's own apply_chat_template (SmolLM2), the
length limit, the resumable stream of Prompt items, a Generator filling Rollout.raw_prompts/columns
row by row, and each bad prompt dataset as one line and exit 2 before anything starts."""

from __future__ import annotations

import json
import logging
import shutil

import pytest

from rlhf_ray.actors.generator import Generator
from rlhf_ray.batch import Prompt
from rlhf_ray.cli import main
from rlhf_ray.config.load import load_config
from rlhf_ray.data.prompts import PromptStream, prompt_set, prompt_stream
from rlhf_ray.errors import UserError
from rlhf_ray.models.adapter import export_adapter
from rlhf_ray.models.policy import load_tokenizer
from rlhf_ray.stages import ppo as ppo_stage
from rlhf_ray.tools.evaluate import heldout_prompts

SMOKE = "configs/smoke.yaml"
SYSTEM = {"role": "system", "content": "Answer with the number only."}
CHAT_ROWS = [
    {"prompt": [SYSTEM, {"role": "user", "content": f"What is {i} + {i}?"}], "answer": str(2 * i), "id": i}
    for i in range(12)
]


def _jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _cfg(*overrides):
    return load_config(SMOKE, list(overrides))


@pytest.fixture(scope="module")
def smol_tokenizer(smollm2):
    return load_tokenizer(smollm2)


@pytest.fixture(scope="module")
def chat_lm(tiny_lm, smol_tokenizer, tmp_path_factory) -> str:
    """The tiny random Llama with SmolLM2's real chat template: chat prompts at tiny-model speed."""
    out = tmp_path_factory.mktemp("chat-lm") / "model"
    shutil.copytree(tiny_lm, out)
    tokenizer = load_tokenizer(str(out))
    tokenizer.chat_template = smol_tokenizer.chat_template
    tokenizer.save_pretrained(out)
    return str(out)


def _template(tokenizer, messages, tokenize=False):
    out = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=tokenize)
    return out["input_ids"] if tokenize and hasattr(out, "keys") else out


def test_rendering_matches_apply_chat_template(tmp_path, smol_tokenizer):
    chat = _jsonl(tmp_path / "chat.jsonl", CHAT_ROWS)
    prompts = prompt_set(_cfg(f"data.dataset={chat}"), smol_tokenizer, "train")
    assert prompts.raws and all(isinstance(r, list) for r in prompts.raws)
    assert prompts.texts == [_template(smol_tokenizer, r) for r in prompts.raws]
    assert prompts.texts[0].endswith("<|im_start|>assistant\n")
    plain = _jsonl(tmp_path / "plain.jsonl", [{"prompt": f"Say {i}.", "answer": i} for i in range(12)])
    auto = prompt_set(_cfg(f"data.dataset={plain}"), smol_tokenizer, "train")
    assert auto.texts == auto.raws  # auto: a plain string is used as given
    wrapped = prompt_set(_cfg(f"data.dataset={plain}", "data.chat_template=true"), smol_tokenizer, "train")
    assert wrapped.raws == auto.raws
    assert wrapped.texts == [_template(smol_tokenizer, [{"role": "user", "content": s}]) for s in auto.raws]
    with pytest.raises(UserError, match="message-list prompts but data.chat_template=false"):
        prompt_set(_cfg(f"data.dataset={chat}", "data.chat_template=false"), smol_tokenizer, "train")


def test_long_prompts_are_dropped_with_a_logged_count(tmp_path, tiny_lm, caplog):
    tokenizer = load_tokenizer(tiny_lm)
    rows = [{"prompt": "word " * n, "n": n} for n in (2, 3, 40, 50, 4, 60, 5, 70, 6, 80, 7, 90)]
    ref = _jsonl(tmp_path / "lengths.jsonl", rows)
    with caplog.at_level(logging.WARNING, logger="rlhf_ray.data.prompts"):
        prompts = prompt_set(_cfg(f"data.dataset={ref}", "data.max_prompt_tokens=30"), tokenizer, "train")
    kept = {n for n in prompts.columns["n"]}
    assert kept and max(kept) < 40
    dropped = sum(1 for n in (40, 50, 60, 70, 80, 90) if not _heldout("word " * n))
    assert (
        f"{dropped} of {len(prompts) + dropped} prompts" in caplog.text and "data.max_prompt_tokens=30" in caplog.text
    )
    with pytest.raises(UserError, match=r"all \d+ prompts are longer than data.max_prompt_tokens=1 tokens"):
        prompt_set(_cfg(f"data.dataset={ref}", "data.max_prompt_tokens=1"), tokenizer, "train")


def _heldout(prompt: str) -> bool:
    from rlhf_ray.data.tables import is_heldout

    return is_heldout(prompt)


def test_stream_of_prompt_items_is_deterministic_and_resumable(tmp_path, smol_tokenizer):
    ref = _jsonl(tmp_path / "chat.jsonl", CHAT_ROWS)
    cfg = _cfg(f"data.dataset={ref}")
    a = prompt_stream(cfg, smol_tokenizer)
    n = len(a)
    first = a.next(n) + a.next(n)  # two epochs: each one a different order of every row
    assert all(isinstance(p, Prompt) for p in first)
    assert sorted(p.columns["id"] for p in first[:n]) == sorted(p.columns["id"] for p in first[n:])
    assert [p.columns["id"] for p in first[:n]] != [p.columns["id"] for p in first[n:]]
    for p in first:  # each item's text, raw prompt and columns come from the same row
        row = CHAT_ROWS[p.columns["id"]]
        assert p.raw == row["prompt"] and p.columns["answer"] == row["answer"]
        assert p.text == _template(smol_tokenizer, row["prompt"])
    b = prompt_stream(cfg, smol_tokenizer)
    b.next(n + 3)
    c = prompt_stream(cfg, smol_tokenizer)
    c.state = b.state  # as a checkpoint restores it
    assert c.next(n - 3) == first[n + 3 :]
    # plain texts still make openings (the bench and older callers)
    openings = PromptStream(["A long enough review text to cut"], smol_tokenizer, 2, 3, seed=0).next(2)
    assert all(p.raw is None and p.columns == {} for p in openings)


def test_generator_fills_raw_prompts_and_columns_for_each_group_row(tmp_path, chat_lm):
    ref = _jsonl(tmp_path / "chat.jsonl", CHAT_ROWS)
    cfg = _cfg(f"model.policy={chat_lm}", f"data.dataset={ref}", "algo.advantage=grpo", "algo.group_size=2")
    tokenizer = load_tokenizer(chat_lm)
    prompts = prompt_stream(cfg, tokenizer).next(3)
    gen = Generator(cfg, chat_lm)
    gen.load_adapter(export_adapter(gen.model, 0))
    rollout, _ = gen.generate(prompts, iteration=1)
    assert len(rollout) == 6 and rollout.group_size == 2
    assert rollout.prompts == [p.text for p in prompts for _ in range(2)]
    assert rollout.raw_prompts == [p.raw for p in prompts for _ in range(2)]
    assert rollout.columns == {
        "answer": [p.columns["answer"] for p in prompts for _ in range(2)],
        "id": [p.columns["id"] for p in prompts for _ in range(2)],
    }
    for i, p in enumerate(prompts):  # the rendered template is tokenized as is: no second BOS or other extras
        ids = rollout.prompt_ids[2 * i][rollout.prompt_mask[2 * i].bool()].tolist()
        assert ids == list(_template(tokenizer, p.raw, tokenize=True))
    # the rows stay aligned through the learner's selections
    picked = rollout.select(rollout.prompt_ids.new_tensor([5, 0]))
    assert picked.columns["id"] == [prompts[2].columns["id"], prompts[0].columns["id"]]
    plain, _ = gen.generate(["This movie was", "The plot"], iteration=2)
    assert plain.raw_prompts is None and plain.columns == {}


# ----------------------------------------------------------------------------- bad inputs: one line, exit 2


@pytest.fixture
def no_run(monkeypatch):
    monkeypatch.setattr(ppo_stage, "run", lambda *a, **k: pytest.fail("a bad input reached the PPO run"))


BAD = [
    ("neither-column", [{"question": "2+2?", "answer": "4"}], [], "neither a prompt column 'prompt'"),
    ("numbers-in-messages", [{"prompt": [1, 2]}], [], "message 0 is 1: each message must be"),
    ("dict-without-role", [{"prompt": [{"speaker": "user", "text": "hi"}]}], [], "message 0 is {'speaker'"),
    ("number-prompt", [{"prompt": 7}], [], "holds int 7: a prompt must be a string"),
    ("empty-messages", [{"prompt": []}], [], "holds an empty list"),
    ("template-true", [{"prompt": "hi"}], ["data.chat_template=true"], "has no chat template"),
    ("messages-no-template", [{"prompt": [{"role": "user", "content": "hi"}]}], [], "has no chat template"),
    ("messages-false", [{"prompt": [{"role": "user", "content": "hi"}]}], ["data.chat_template=false"], "=false"),
    ("too-long", [{"prompt": "many words " * 20}], ["data.max_prompt_tokens=2"], "data.max_prompt_tokens=2"),
    ("chat-template-int", [{"prompt": "hi"}], ["data.chat_template=1"], "must be auto, true or false"),
]


@pytest.mark.parametrize("rows,overrides,expected", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_prompt_datasets_are_one_line_and_exit_2(tmp_path, capsys, no_run, rows, overrides, expected):
    ref = _jsonl(tmp_path / "bad.jsonl", rows * 30)  # enough rows that some are in the train split
    run = tmp_path / "run"
    code = main(["ppo", "--config", SMOKE, "--run-dir", str(run), f"data.dataset={ref}", *overrides])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith("rlhf-ray: error: ") and expected in err, err
    assert not run.exists()  # nothing started


def test_invalid_utf8_csv_is_one_line_and_exit_2(tmp_path, capsys, no_run):
    path = tmp_path / "latin1.csv"
    path.write_bytes(b"prompt,answer\n" + b"caf\xe9 au lait?,1\n" * 30)
    code = main(["ppo", "--config", SMOKE, "--run-dir", str(tmp_path / "run"), f"data.dataset={path}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and f"{path} is not valid UTF-8 (line 2" in err, err


def test_eval_prompts_are_rendered_as_in_training(tmp_path, smol_tokenizer):
    data = _jsonl(tmp_path / "train.jsonl", CHAT_ROWS)
    ref = _jsonl(tmp_path / "eval.jsonl", CHAT_ROWS[:5])
    cfg = _cfg(f"data.dataset={data}", f"eval.dataset={ref}", "eval.num_prompts=3")
    got = heldout_prompts(cfg, smol_tokenizer)
    assert len(got) == 3 and len({p.columns["id"] for p in got}) == 3
    assert all(p.text == _template(smol_tokenizer, CHAT_ROWS[p.columns["id"]]["prompt"]) for p in got)
    train = prompt_set(cfg, smol_tokenizer, "train")
    same = [p for p in got if p.raw in train.raws]
    assert same and all(train.texts[train.raws.index(p.raw)] == p.text for p in same)  # the text PPO trained on
