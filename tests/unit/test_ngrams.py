"""The bag-of-n-grams reward classifier (reward.backbone=ngrams): features by hand, a fit that
separates a toy set, the saved files read back to the same scores, RewardModel on its directory."""

from __future__ import annotations

import math

import pytest
import torch

from rlhf_ray.errors import UserError
from rlhf_ray.models.assets import resolve_model
from rlhf_ray.rewards.classifier import RewardModel
from rlhf_ray.rewards.ngrams import ENSEMBLE_DIR, NgramClassifier, blend, grams, is_ngram_model, train_nb_logistic

POSITIVE = ["a great film, loved it", "wonderful acting and a great story", "loved every minute, wonderful"]
NEGATIVE = ["an awful film, hated it", "boring acting and an awful story", "hated every minute, boring"]


def test_grams_are_lowercased_words_and_their_bigrams():
    assert grams("Great movie!<br />Don't") == {
        "great",
        "movie",
        "!",
        "don't",
        "great movie",
        "movie !",
        "! don't",
    }


def test_hand_weights_give_the_hand_margin():
    model = NgramClassifier(["great", "awful", "not great"], torch.tensor([2.0, -3.0, -4.5]), bias=0.25)
    z = model.margin(["Great!", "not great", "awful, great", "nothing known"])
    torch.testing.assert_close(z, torch.tensor([2.25, -2.25, -0.75, 0.25]))
    logits = model.logits(["Great!"])
    assert logits.tolist() == [[0.0, 2.25]]  # softmax: sigmoid(z) for the positive label
    assert model.margin([]).shape == (0,)


def test_fit_separates_a_toy_set_and_saves_what_it_scores(tmp_path):
    model, loss = train_nb_logistic(POSITIVE + NEGATIVE, [1] * 3 + [0] * 3, min_count=2, epochs=60, lr=0.2)
    assert loss < 0.1
    assert {"great", "a great", "loved"} <= set(model.index) and "wonderful acting" not in model.index  # 1 text
    z = model.margin(["a great story", "an awful story"])
    assert z[0] > 0 > z[1]
    model.save(tmp_path)
    assert is_ngram_model(tmp_path)
    assert resolve_model(str(tmp_path), tmp_path / "cache") == str(tmp_path)  # eval and ppo take it as reward.model
    again = NgramClassifier.load(tmp_path)
    torch.testing.assert_close(again.margin(POSITIVE + NEGATIVE), model.margin(POSITIVE + NEGATIVE))
    reward = RewardModel(str(tmp_path), score="log_prob")
    scores = reward.score(["loved it, wonderful", "hated it, boring"])
    expected = [math.log(torch.sigmoid(v).item()) for v in model.margin(["loved it, wonderful", "hated it, boring"])]
    torch.testing.assert_close(scores, torch.tensor(expected))
    with pytest.raises(UserError, match="both labels"):
        train_nb_logistic(POSITIVE, [1, 1, 1])
    with pytest.raises(ValueError, match="n-grams"):
        NgramClassifier(["a"], torch.zeros(2), 0.0)


def test_blend_averages_the_two_margins_by_hand():
    logits = torch.tensor([[1.0, 3.0], [0.5, -1.5]])  # margins 2 and -2 for positive = 1
    z = torch.tensor([4.0, 1.0])
    torch.testing.assert_close(blend(logits, z, pos=1), torch.tensor([[0.0, 3.0], [0.0, -0.5]]))
    # positive = 0: margins -2 and 2, means 1 and 1.5, in column 0
    torch.testing.assert_close(blend(logits, z, pos=0), torch.tensor([[1.0, 0.0], [1.5, 0.0]]))


def test_reward_model_scores_an_ensemble_directory_with_the_mean_margin(tmp_path, tiny_classifier):
    """reward.ngram_ensemble's layout: a classifier checkpoint with an n-gram model in ngrams/; log_prob is
    log sigmoid of the mean of the encoder's margin and the n-gram margin. Beside a 1-output model: refused."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(0)
    encoder = AutoModelForSequenceClassification.from_pretrained(tiny_classifier, num_labels=2).eval()
    encoder.save_pretrained(tmp_path / "rm")
    tokenizer = AutoTokenizer.from_pretrained(tiny_classifier)
    tokenizer.save_pretrained(tmp_path / "rm")
    ngrams = NgramClassifier(["great", "awful"], torch.tensor([2.0, -3.0]), bias=0.5)
    ngrams.save(tmp_path / "rm" / ENSEMBLE_DIR)
    texts = ["a great story", "an awful story"]
    with torch.no_grad():
        logits = encoder(**tokenizer(texts, return_tensors="pt", padding=True)).logits
    mean = (logits[:, 1] - logits[:, 0] + torch.tensor([2.5, -2.5])) / 2
    reward = RewardModel(str(tmp_path / "rm"), score="log_prob")
    torch.testing.assert_close(reward.score(texts), torch.nn.functional.logsigmoid(mean))
    scalar = AutoModelForSequenceClassification.from_pretrained(
        tiny_classifier, num_labels=1, ignore_mismatched_sizes=True
    )
    scalar.save_pretrained(tmp_path / "scalar")
    tokenizer.save_pretrained(tmp_path / "scalar")
    ngrams.save(tmp_path / "scalar" / ENSEMBLE_DIR)
    with pytest.raises(UserError, match="1-label classifier"):
        RewardModel(str(tmp_path / "scalar"))
