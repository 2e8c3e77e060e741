"""cluster.yaml is a valid `ray up` definition (checked offline with Ray's own schema)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

CLUSTER = Path(__file__).resolve().parents[2] / "cluster.yaml"


def test_cluster_yaml_passes_ray_validation():
    config = yaml.safe_load(CLUSTER.read_text())
    validate_config(prepare_config(copy.deepcopy(config)))
    gpu_nodes = [n for n in config["available_node_types"].values() if n["resources"].get("GPU")]
    assert gpu_nodes and all(isinstance(n["resources"]["GPU"], int) for n in gpu_nodes)


def test_validation_is_not_vacuous():
    config = yaml.safe_load(CLUSTER.read_text())
    config["available_node_types"]["gpu_24gb"]["resources"]["GPU"] = 0.5
    with pytest.raises(Exception):
        validate_config(prepare_config(config))
