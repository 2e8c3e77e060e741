"""The sft, merge and reward stages run through the CLI on tiny models, with real 8-bit
quantization on CPU and a real local Ray cluster."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rlhf_ray.cli import main

# Repetitive phrases: a tiny random LM can lower its held-out loss on them within a few dozen steps.
PHRASES = [
    "the film was good and the actors were good .",
    "a fine movie with a fine story .",
    "great acting and a great plot .",
]
POSITIVE = ["great wonderful film", "i loved this movie , wonderful", "a great and moving story"]
NEGATIVE = ["awful boring film", "i hated this movie , boring", "an awful and dull story"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    with (root / "phrases.jsonl").open("w") as f:
        for i in range(300):
            f.write(json.dumps({"text": f"review {i} : " + " ".join(PHRASES[(i + j) % 3] for j in range(4))}) + "\n")
    rows = [
        f'"{t} {i}",{label}'
        for i in range(100)
        for label, group in ((1, POSITIVE), (0, NEGATIVE))
        for t in [group[i % 3]]
    ]
    (root / "sentiment.csv").write_text("text,label\n" + "\n".join(rows) + "\n")
    return root


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def sft_run(ray_session, data_dir, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("sft")
    code = main(
        [
            "sft",
            "--run-dir",
            str(run_dir),
            "model.policy=tiny-random-llama",
            "model.quant=8bit",
            f"sft.dataset={data_dir / 'phrases.jsonl'}",
            "sft.train_docs=200",
            "sft.max_length=64",
            "sft.batch_size=8",
            "sft.grad_accum=2",
            "sft.max_steps=30",
            "sft.lr=1e-2",
            "sft.eval_blocks=8",
        ]
    )
    assert code == 0
    return run_dir


def test_sft_lowers_held_out_loss_and_saves_a_peft_adapter(sft_run, tiny_lm):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    done = read_json(sft_run / "DONE.json")
    assert done == read_json(sft_run / "metrics.json")
    assert done["eval_loss_after"] < done["eval_loss_before"] - 0.1
    steps = [json.loads(line) for line in (sft_run / "metrics.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == list(range(1, 31))
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_lm), str(sft_run / "adapter"))
    trained = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert trained and all(p.abs().sum() > 0 for p in trained)  # lora_B starts at zero
    # Portable: the base as the user named it, the tokenizer, and a model card with the figures.
    adapter = sft_run / "adapter"
    assert read_json(adapter / "adapter_config.json")["base_model_name_or_path"] == "tiny-random-llama"
    assert (adapter / "tokenizer.json").exists() and "| eval_loss_after |" in (adapter / "README.md").read_text()


def test_merged_model_equals_base_plus_adapter(ray_session, tiny_lm, tmp_path):
    from transformers import AutoModelForCausalLM

    from rlhf_ray.models.adapter import save_adapter
    from rlhf_ray.models.policy import attach_lora, load_causal_lm

    model = attach_lora(load_causal_lm(tiny_lm, "none", "cpu"), 4, 8, 0.0, None)
    torch.manual_seed(0)
    with torch.no_grad():  # a fresh LoRA is a no-op (lora_B = 0): make it change the weights
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5)
    save_adapter(model, tmp_path / "adapter")
    ids = torch.randint(5, 500, (2, 12))
    with torch.no_grad():
        expected = model(input_ids=ids).logits
        with model.disable_adapter():
            base = model(input_ids=ids).logits
    assert (expected - base).abs().max() > 1e-2

    run_dir = tmp_path / "merge"
    assert (
        main(
            [
                "merge",
                "--run-dir",
                str(run_dir),
                "model.policy=tiny-random-llama",
                f"merge.adapter={tmp_path / 'adapter'}",
            ]
        )
        == 0
    )
    assert read_json(run_dir / "DONE.json")["model"] == str(run_dir / "model")
    assert (run_dir / "model" / "tokenizer_config.json").exists()
    merged = AutoModelForCausalLM.from_pretrained(str(run_dir / "model"), dtype=torch.float32)
    with torch.no_grad():
        got = merged(input_ids=ids).logits
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_merge_without_adapter_is_a_one_line_error(tmp_path, capsys):
    assert main(["merge", "--run-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "merge.adapter=RUN_DIR/adapter" in err[0]
    assert not (tmp_path / "DONE.json").exists()


@pytest.mark.parametrize("method, quant, lr", [("full", "none", 2e-3), ("lora", "8bit", 2e-2)])
def test_reward_stage_trains_a_classifier_reward_model_loads(ray_session, data_dir, tmp_path, method, quant, lr):
    from rlhf_ray.rewards.classifier import RewardModel

    argv = [
        "reward",
        "--run-dir",
        str(tmp_path),
        "reward.backbone=tiny-random-bert",
        f"reward.dataset={data_dir / 'sentiment.csv'}",
        f"reward.method={method}",
        f"reward.quant={quant}",
        "reward.train_size=160",
        "reward.eval_size=40",
        "reward.epochs=3",
        f"reward.lr={lr}",
        "reward.train_batch_size=16",
        "reward.train_max_length=32",
        "model.lora_r=8",
    ]
    assert main(argv) == 0
    done = read_json(tmp_path / "DONE.json")
    assert done == read_json(tmp_path / "metrics.json") and done["method"] == method
    # Separable toy sentiment: a trained classifier gets it right, a broken training loop does not. This tiny
    # backbone ships a (random) 2-label head of its own, so the held-out set was scored before training too.
    assert done["accuracy"] >= 0.9 > done["accuracy_before"]
    reward = RewardModel(str(tmp_path / "model"), quant=quant)
    scores = reward.score(["a great and moving story 7", "an awful and dull story 7"])
    assert scores[0] > scores[1]
    if method == "full":  # a trained classifier as the backbone: its head is kept and scored before training
        again = ["reward", "--run-dir", str(tmp_path / "again"), f"reward.backbone={tmp_path / 'model'}"]
        assert main([*again, *argv[4:], "reward.epochs=1"]) == 0
        assert read_json(tmp_path / "again" / "DONE.json")["accuracy_before"] >= 0.9


def test_reward_stage_trains_the_ngram_classifier_that_ppo_scores_with(ray_session, data_dir, tmp_path):
    """reward.backbone=ngrams: every training row, the held-out and opening accuracies, a model dir the
    reward scorer reads (RewardModel) and the planner sizes without a transformers config."""
    from rlhf_ray.config.load import load_config
    from rlhf_ray.rewards.classifier import RewardModel
    from rlhf_ray.runtime.plan import make_plan

    argv = ["reward.backbone=ngrams", f"reward.dataset={data_dir / 'sentiment.csv'}"]
    assert main(["reward", "--run-dir", str(tmp_path), *argv]) == 0
    done = read_json(tmp_path / "DONE.json")
    assert done["method"] == "ngrams" and done["accuracy_before"] == 0.5
    assert done["accuracy"] == 1.0 and 0.0 <= done["opening_accuracy"] <= 1.0
    assert done["train_size"] + done["eval_size"] == 200  # the whole file: train split + held-out split
    reward = RewardModel(str(tmp_path / "model"), score="log_prob")
    scores = reward.score(["a great and moving story 7", "an awful and dull story 7"])
    assert scores[0] > scores[1]
    cfg = load_config(None, [f"reward.model={tmp_path / 'model'}", "reward.score=log_prob"])
    assert make_plan(cfg).layouts["separate"].roles["scorer"].base > 0


def test_reward_stage_ensemble_saves_both_models_and_scores_their_mean_margin(ray_session, data_dir, tmp_path):
    """reward.ngram_ensemble: the encoder trains as usual, the n-gram model fits on every training row; the
    held-out figures are the ensemble's, the encoder's own beside them; the scorer reads the mean margin."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from rlhf_ray.rewards.classifier import RewardModel
    from rlhf_ray.rewards.ngrams import ENSEMBLE_DIR, NgramClassifier

    argv = ["reward.backbone=tiny-random-bert", f"reward.dataset={data_dir / 'sentiment.csv'}", "reward.epochs=1"]
    argv += ["reward.train_size=32", "reward.eval_size=40", "reward.train_max_length=32", "reward.ngram_ensemble=true"]
    assert main(["reward", "--run-dir", str(tmp_path), *argv]) == 0
    done = read_json(tmp_path / "DONE.json")
    assert done["accuracy"] == 1.0  # the n-gram half separates the toy set whatever 2 steps did to the encoder
    assert 0.0 <= done["encoder_accuracy"] <= 1.0 and 0.0 <= done["encoder_opening_accuracy"] <= 1.0
    model = tmp_path / "model"
    texts = ["a great and moving story 7", "an awful and dull story 7"]
    encoder = AutoModelForSequenceClassification.from_pretrained(model).eval()
    with torch.no_grad():
        logits = encoder(**AutoTokenizer.from_pretrained(model)(texts, return_tensors="pt", padding=True)).logits
    mean = (logits[:, 1] - logits[:, 0] + NgramClassifier.load(model / ENSEMBLE_DIR).margin(texts)) / 2
    scores = RewardModel(str(model), score="log_prob").score(texts)
    torch.testing.assert_close(scores, torch.nn.functional.logsigmoid(mean))
    assert scores[0] > scores[1]


def test_ngram_ensemble_refuses_the_pairwise_objective(capsys, tmp_path):
    assert main(["reward", "--run-dir", str(tmp_path), "reward.ngram_ensemble=true", "reward.objective=pairwise"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "reward.ngram_ensemble" in err[0] and "objective=classifier" in err[0]


def test_ngram_backbone_refuses_the_pairwise_objective(capsys, tmp_path):
    assert main(["reward", "--run-dir", str(tmp_path), "reward.backbone=ngrams", "reward.objective=pairwise"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "reward.backbone" in err[0] and "objective=classifier" in err[0]


def test_truncated_rows_mask_padding_but_keep_eos_when_pad_is_eos():
    from rlhf_ray.stages.sft import collate, pack, truncate

    assert list(pack([[1, 2], [3, 4, 5]], eos_id=9, block=3)) == [[1, 2, 9], [3, 4, 5]]
    rows = list(truncate([[1, 2, 3, 4], [5]], eos_id=9, max_length=3))
    batch = collate(rows, pad_id=9)
    assert rows == [[1, 2, 3], [5, 9]]
    assert batch["labels"].tolist() == [[1, 2, 3], [5, 9, -100]]
