"""Every shipped config loads and validates, so none goes stale."""

from __future__ import annotations

from pathlib import Path

import pytest

from rlhf_ray.config.schema import load_config

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


def test_cluster_gpu_layout_fills_whole_workers_and_keeps_learners_apart():
    c = load_config(Path(CONFIGS[0]).parent / "cluster_gpu.yaml").cluster
    assert c.num_generators == c.num_scorers == c.num_learners == 2
    # one replica of each role per 1-GPU worker; NCCL needs the two learners on different GPUs
    assert c.generator_gpus + c.scorer_gpus + c.learner_gpus == pytest.approx(1.0)
    assert c.learner_gpus > 0.5 and c.placement_strategy == "SPREAD"
