"""A sweep's runs: `--grid KEY=[v1,v2]` (the cartesian product) or a runs file (named runs, each a
list of overrides), and the keys every run must share because they change the one base they train
on (the model, its quantization, the tokenizer, the cluster and role layout)."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import yaml

from rlhf_ray.config.parse import flatten
from rlhf_ray.config.schema import Config
from rlhf_ray.errors import ConfigError, UserError

# Keys (or `section.` prefixes) that cannot differ between the runs of one sweep: each changes the
# one quantized base (its weights, quantization, tokenizer, layout in memory) or the one cluster /
# role layout the runs share.
SHARED_KEYS = (
    "model.policy",
    "model.quant",
    "model.gradient_checkpointing",
    "model.dequant_cache",
    "run.cache_dir",
    "cluster.",
)
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+=,-]*$")


def shared_key(key: str) -> bool:
    return any(key == k or (k.endswith(".") and key.startswith(k)) for k in SHARED_KEYS)


def parse_grid(spec: str) -> tuple[str, list]:
    """`ppo.lr=[1e-4,3e-4]` -> ("ppo.lr", [0.0001, 0.0003])."""
    key, eq, raw = spec.partition("=")
    key = key.strip()
    if not eq or not key:
        raise UserError(f"--grid {spec!r}: write KEY=[v1,v2,...], e.g. --grid 'ppo.lr=[1e-4,3e-4]'")
    try:
        values = yaml.safe_load(raw)
    except yaml.YAMLError:
        values = None
    if not isinstance(values, list) or not values:
        raise UserError(f"--grid {spec!r}: the values must be a non-empty YAML list, e.g. {key}=[1,2]")
    return key, values


def _text(value) -> str:
    """A value as an override writes it (YAML flow style for lists and maps)."""
    if isinstance(value, str):
        return value
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def grid_runs(grids: list[str]) -> dict[str, list[str]]:
    """The cartesian product of every --grid: run name -> its overrides, e.g.
    {"lr=0.0001,seed=0": ["ppo.lr=0.0001", "run.seed=0"], ...} (names from each key's last part)."""
    axes = [parse_grid(g) for g in grids]
    keys = [k for k, _ in axes]
    if len(set(keys)) != len(keys):
        raise UserError(f"--grid names a key twice: {sorted(k for k in keys if keys.count(k) > 1)[0]}")
    short = [k.rsplit(".", 1)[-1] for k in keys]
    labels = short if len(set(short)) == len(short) else keys
    runs: dict[str, list[str]] = {}
    for combo in itertools.product(*[values for _, values in axes]):
        name = ",".join(f"{label}={_safe(_text(v))}" for label, v in zip(labels, combo))
        if name in runs:
            raise UserError(
                f"--grid: two runs would both be named {name!r}: make the values differ in letters or digits"
            )
        runs[name] = [f"{k}={_text(v)}" for k, v in zip(keys, combo)]
    return runs


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "-", text).strip("-") or "x"


def runs_file(path: str | Path) -> dict[str, list[str]]:
    """A YAML mapping of run name -> list of overrides (`lr-high: [ppo.lr=3e-4, run.seed=1]`)."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"--runs {p}: no such file")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise UserError(f"--runs {p} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict) or not data:
        raise UserError(f"--runs {p}: write a mapping of run name -> list of KEY=VALUE overrides")
    runs = {}
    for name, overrides in data.items():
        overrides = overrides or []
        if not isinstance(overrides, list) or not all(isinstance(o, str) and "=" in o for o in overrides):
            raise UserError(f"--runs {p}: run {name!r} must be a list of KEY=VALUE overrides")
        runs[str(name)] = list(overrides)
    return runs


def check_names(names: list[str]) -> None:
    for name in names:
        if not NAME.match(name) or name in (".", ".."):
            raise UserError(f"run name {name!r}: use letters, digits and . _ + = , - (it names the run's directory)")


def check_sweep(configs: dict[str, Config]) -> None:
    """Refuse, in one line naming the key, a key that must be the same in every run."""
    flat = {name: flatten(cfg.to_dict()) for name, cfg in configs.items()}
    first_name, first = next(iter(flat.items()))
    for name, keys in flat.items():
        for key in sorted(set(keys) | set(first)):
            if shared_key(key) and keys.get(key) != first.get(key):
                raise ConfigError(
                    key,
                    f"cannot differ between the runs of a sweep ({first_name}: {first.get(key)!r}, "
                    f"{name}: {keys.get(key)!r}): every run trains on the same base, tokenizer and cluster",
                    "set it once, in --config or the sweep's common overrides",
                )
