"""reward.train_window and reward.train_layers: what the reward stage trains on, and which of its layers."""

from __future__ import annotations

import pytest

from rlhf_ray.config.load import load_config
from rlhf_ray.errors import ConfigError
from rlhf_ray.stages.reward import windows


def test_each_text_gives_one_window_of_consecutive_words_seeded():
    texts = [" ".join(f"w{i}" for i in range(50)), "short<br />review", "a b c d e"]
    out = windows(texts, 5, seed=3)
    assert len(out) == 3
    words = out[0].split()
    start = int(words[0][1:])
    assert words == [f"w{i}" for i in range(start, start + 5)] and 0 <= start <= 45
    assert out[1] == "short review"  # shorter than a window: whole, IMDB's line breaks as spaces
    assert out[2] == "a b c d e"  # exactly one window long: start 0 is the only place
    assert windows(texts, 5, seed=3) == out  # seeded
    starts = {windows(texts, 5, seed=s)[0].split()[0] for s in range(20)}
    assert len(starts) > 5  # and spread over the review, not always its opening


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["reward.train_window=0"], "reward.train_window"),
        (["reward.train_window=30", "reward.objective=pairwise"], "reward.train_window"),
    ],
)
def test_bad_windows_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_train_layers_freezes_the_embeddings_and_the_lower_layers(tiny_classifier):
    from transformers import AutoModelForSequenceClassification

    from rlhf_ray.errors import UserError
    from rlhf_ray.stages.reward import freeze_below

    model = AutoModelForSequenceClassification.from_pretrained(tiny_classifier, num_labels=2)
    layers = len(model.bert.encoder.layer)
    freeze_below(model, 1)
    trainable = {
        n.split(".")[1] if n.startswith("bert.") else n.split(".")[0]
        for n, p in model.named_parameters()
        if p.requires_grad
    }
    assert trainable == {"encoder", "pooler", "classifier"}
    top = f"bert.encoder.layer.{layers - 1}."
    for name, p in model.named_parameters():
        if name.startswith("bert.encoder."):
            assert p.requires_grad == name.startswith(top), name  # only the top layer of the encoder
    with pytest.raises(UserError, match=f"has {layers} layers"):
        freeze_below(model, layers + 1)


def test_train_layers_is_refused_where_it_does_not_apply():
    for overrides in (["reward.train_layers=0"], ["reward.train_layers=2", "reward.method=lora"]):
        with pytest.raises(ConfigError, match="reward.train_layers"):
            load_config(None, overrides)
