"""Every shipped config loads and validates, so none goes stale."""

from __future__ import annotations

from pathlib import Path

import pytest

from rlhf_ray.config import load_config

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))


def test_configs_exist():
    assert {p.name for p in CONFIGS} >= {"default.yaml", "smoke.yaml", "single_gpu_24gb.yaml"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_validates(path):
    load_config(path)


def test_single_gpu_layout_fits_one_card():
    c = load_config(Path(CONFIGS[0]).parent / "single_gpu_24gb.yaml").cluster
    shares = c.num_generators * c.generator_gpus + c.num_scorers * c.scorer_gpus + c.num_learners * c.learner_gpus
    assert 0 < shares <= 1.0
