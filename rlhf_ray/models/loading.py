"""transformers' LOAD REPORT, held back where the keys it reports are the ones the caller expects.

transformers prints a table of the keys a `from_pretrained` load missed, did not expect or replaced
(`classifier.weight | MISSING ... Consider training on your downstream task`). Where those keys are
a classification head the caller trains next (the reward stage's fresh head on an encoder that has
none, like MiniLM) or loads next (a LoRA reward model's head comes with its adapter), the table
says nothing a user can act on: `load_with_head` holds it back and returns the head's keys, for one
line of the caller's. A report naming any other key (a weight the checkpoint lacks, one it has that
the model does not expect) is shown exactly as transformers wrote it."""

from __future__ import annotations

import logging
from collections.abc import Iterable

HF_LOGGER = "transformers.modeling_utils"  # where transformers logs the report
REPORT_MARK = "LOAD REPORT"


class _Hold(logging.Filter):
    """Holds the report records logged while it is installed (everything else passes)."""

    def __init__(self):
        super().__init__()
        self.held: list[logging.LogRecord] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if REPORT_MARK in str(record.msg):
            self.held.append(record)
            return False
        return True


def _in(key: str, modules: Iterable[str]) -> bool:
    return any(key == m or key.startswith(f"{m}.") for m in modules)


def head_keys(info: dict, head_modules: Iterable[str]) -> tuple[list[str], list[str]]:
    """(the reported keys that belong to the head, every other reported key) of a loading-info dict
    (`output_loading_info=True`: missing, unexpected and mismatched keys)."""
    modules = tuple(head_modules)
    mismatched = [m[0] if isinstance(m, (tuple, list)) else m for m in info.get("mismatched_keys") or ()]
    head, other = [], []
    for key in sorted({*(info.get("missing_keys") or ()), *mismatched}):
        (head if _in(key, modules) else other).append(key)
    other += sorted(info.get("unexpected_keys") or ())  # a weight the model has no place for: always shown
    return head, other


def load_with_head(cls, path: str, head_modules: Iterable[str], **kwargs):
    """(model, head keys): `cls.from_pretrained(path, **kwargs)`, its LOAD REPORT held back when the
    only keys it names are the head's (missing or replaced by one of another size, `head_modules`);
    returned so the caller can say what it does with the head in one line. Any other key in the
    report, or a failed load, lets the report through as transformers wrote it."""
    logger = logging.getLogger(HF_LOGGER)
    hold = _Hold()
    logger.addFilter(hold)
    show = True
    try:
        model, info = cls.from_pretrained(path, output_loading_info=True, **kwargs)
        head, other = head_keys(info, head_modules)
        show = bool(other)
    finally:
        logger.removeFilter(hold)
        if show:
            for record in hold.held:
                logger.handle(record)
    return model, head
