"""Expected library messages are held back or said in one line of ours; anything unexpected shows.

The real thing (MiniLM with a fresh head, bitsandbytes imported offline, in a process set up as a
run's) is tests/integration/test_quiet_stage.py; these check the rules on records shaped like the
libraries' (and that the libraries still word them so)."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import pytest

from rlhf_ray import process as noise
from rlhf_ray.models.loading import HF_LOGGER, REPORT_MARK, head_keys, load_with_head

HEAD = ["classifier", "score", "pooler"]
REPORT = "BertForSequenceClassification LOAD REPORT from: m\nKey | Status\nclassifier.weight | MISSING"


class Keep(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture
def kept():
    """What reaches the handlers of a logger (after its filters), for the loggers a test names."""
    added = []

    def watch(name: str) -> Keep:
        logger, handler = logging.getLogger(name), Keep()
        added.append((logger, handler, logger.level))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        return handler

    yield watch
    for logger, handler, level in added:
        logger.removeHandler(handler)
        logger.setLevel(level)


def fake_model(info: dict, fail: bool = False):
    """A from_pretrained that logs its report as transformers does, then returns (model, info)."""

    class Model:
        @classmethod
        def from_pretrained(cls, path, output_loading_info=False, **kwargs):
            assert output_loading_info
            logging.getLogger(HF_LOGGER).warning(REPORT)
            if fail:
                raise RuntimeError("You set `ignore_mismatched_sizes` to `False`")
            return "model", info

    return Model


def test_a_fresh_head_is_held_back_and_named(kept):
    seen = kept(HF_LOGGER)
    info = {"missing_keys": {"classifier.weight", "classifier.bias"}, "unexpected_keys": set(), "mismatched_keys": []}
    model, head = load_with_head(fake_model(info), "m", HEAD)
    assert model == "model" and head == ["classifier.bias", "classifier.weight"] and seen.messages == []
    # a 2-label head under a scalar model: replaced, (key, shape in checkpoint, shape in model)
    info = {"missing_keys": set(), "unexpected_keys": set(), "mismatched_keys": {("score.weight", (2, 8), (1, 8))}}
    assert load_with_head(fake_model(info), "m", HEAD)[1] == ["score.weight"] and seen.messages == []


@pytest.mark.parametrize(
    "info",
    [
        {"missing_keys": {"classifier.weight", "bert.encoder.layer.0.attention.self.query.weight"}},
        {"missing_keys": {"classifier.weight"}, "unexpected_keys": {"lm_head.weight"}},
        {"mismatched_keys": [("bert.embeddings.word_embeddings.weight", (9, 8), (10, 8))]},
    ],
    ids=["a missing encoder weight", "an unexpected weight", "an encoder weight of another size"],
)
def test_a_report_of_any_other_key_shows_as_transformers_wrote_it(kept, info):
    seen = kept(HF_LOGGER)
    load_with_head(fake_model(info), "m", HEAD)
    assert seen.messages == [REPORT]
    assert head_keys(info, HEAD)[1]  # named as unexpected


def test_a_failed_load_shows_its_report(kept):
    seen = kept(HF_LOGGER)
    with pytest.raises(RuntimeError):
        load_with_head(fake_model({}, fail=True), "m", HEAD)
    assert seen.messages == [REPORT]
    logging.getLogger(HF_LOGGER).warning("another transformers warning")  # the filter is gone
    assert seen.messages[-1] == "another transformers warning"


def test_transformers_still_words_its_report_so():
    transformers = Path(importlib.util.find_spec("transformers").origin).parent  # read, not imported
    text = (transformers / "utils" / "loading_report.py").read_text()
    assert REPORT_MARK in text and "output_loading_info" in (transformers / "modeling_utils.py").read_text()


def test_the_offline_kernel_trust_check_is_dropped_and_other_kernels_warnings_show(kept):
    noise.install_log_filters()
    seen = kept(noise.KERNELS_LOGGER)
    logger = logging.getLogger(noise.KERNELS_LOGGER)
    logger.warning(
        f"{noise.KERNELS_MESSAGE}'kernels-community/quantization-bitsandbytes' because Hugging Face Hub is in "
        "offline mode."
    )
    logger.warning("Kernel 'x' could not be loaded")
    assert seen.messages == ["Kernel 'x' could not be loaded"]
    spec = importlib.util.find_spec("kernels")
    if spec is not None:  # still the kernels package's wording (read, not imported)
        source = (Path(spec.origin).parent / "_internals" / "hf_hub.py").read_text()
        assert noise.KERNELS_MESSAGE.strip() in source


def test_a_gguf_conversion_shows_no_load_bars_and_restores_them(capsys):
    import transformers.modeling_gguf_pytorch_utils as gguf_utils
    from transformers.utils import logging as hf_logging

    from rlhf_ray.models.assets import no_load_bars

    def bars() -> str:  # the two bars a GGUF load draws, through the names transformers calls them by
        list(gguf_utils.tqdm(range(3), desc="Converting and de-quantizing GGUF tensors..."))
        list(hf_logging.tqdm(range(3), desc="Loading weights"))
        return capsys.readouterr().err

    before = hf_logging.is_progress_bar_enabled()
    hf_logging.enable_progress_bar()
    try:
        with no_load_bars():
            assert bars() == ""
        shown = bars()
        assert "de-quantizing GGUF" in shown and "Loading weights" in shown and hf_logging.is_progress_bar_enabled()
    finally:
        if not before:
            hf_logging.disable_progress_bar()
