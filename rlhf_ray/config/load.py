"""Read a config: a YAML file plus dotted `key=value` overrides, built into the typed schema and
validated before anything heavy starts. Unknown keys, wrong types and impossible values raise
ConfigError naming the key."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from rlhf_ray.config.checks import validate
from rlhf_ray.config.parse import build, flatten, merge, parse_overrides
from rlhf_ray.config.schema import Config
from rlhf_ray.errors import ConfigError
from rlhf_ray.store.checkpoint import atomic_write


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> Config:
    """Read YAML (optional), apply overrides, build the typed config and validate it."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError("--config", f"file {p} does not exist", "pass an existing YAML file")
        try:
            data = yaml.safe_load(p.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError("--config", f"{p} is not valid YAML: {exc}".splitlines()[0]) from None
        if data is None:
            raise ConfigError("--config", f"{p} is empty", "pass a YAML file with at least one section, or no --config")
        if not isinstance(data, dict):
            raise ConfigError("--config", f"{p} must hold a mapping of sections")
    extra = parse_overrides(overrides or [])
    cfg = build(Config, merge(data, extra))
    validate(cfg, given=(set(flatten(extra)), set(flatten(data))))
    return cfg


def config_from_dict(data: dict[str, Any]) -> Config:
    """Rebuild a Config saved with to_dict() (e.g. from a run directory or inside an actor)."""
    cfg = build(Config, data)
    validate(cfg)
    return cfg


def save_config(cfg: Config, path: str | os.PathLike) -> None:
    """Written whole (temp file + rename): `eval` or `report` reading a live run never sees half a config."""
    atomic_write(Path(path), yaml.safe_dump(cfg.to_dict(), sort_keys=False).encode())
