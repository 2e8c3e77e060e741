"""Typed dataclasses from YAML-shaped dicts and `section.key=value` overrides, generic over the
schema: every unknown key and wrong type is a ConfigError naming the dotted key."""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from typing import Any, Literal

import yaml

from rlhf_ray.config.help import one_of, suggest
from rlhf_ray.errors import ConfigError


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Check `value` against the type hint `tp`; the only conversion is int -> float."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(key, value, arg)
            except ConfigError as exc:
                errors.append(exc)
        raise errors[0]
    if origin is Literal:
        choices = typing.get_args(tp)
        if isinstance(value, bool) and {"on", "off"} <= set(choices):  # YAML 1.1 reads on/off as booleans
            value = "on" if value else "off"
        if value not in choices:
            raise ConfigError(key, f"must be one of {', '.join(map(str, choices))}; got {value!r}")
        return value
    if origin is list:
        if isinstance(value, str):  # `key=a,b` on the command line
            value = [v for v in value.split(",") if v]
        if not isinstance(value, list):
            raise ConfigError(key, f"must be a list; got {value!r}")
        (item_tp,) = typing.get_args(tp)
        return [_coerce(f"{key}[{i}]", v, item_tp) for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):  # an entry of a list of mappings, e.g. reward.sources[1]
        if not isinstance(value, dict):
            raise ConfigError(key, f"must be a mapping of keys; got {value!r}")
        return _build(tp, value, f"{key}.", tp)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float) and isinstance(value, bool) or not isinstance(value, tp):
        raise ConfigError(key, f"must be of type {tp.__name__}; got {value!r}")
    return value


def build(root: type, data: dict[str, Any]) -> Any:
    """The dataclass `root` from a nested dict, every key and type checked (ConfigError names the key)."""
    return _build(root, data, "", root)


def _build(cls: type, data: dict[str, Any], prefix: str, root: type) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            close = _suggest(root, cls, prefix, key, names)
            hint = f"; did you mean {one_of(close)}?" if close else ""
            valid = (
                f"valid keys under '{prefix}': {', '.join(sorted(names))}"
                if prefix
                else f"keys are written section.key; sections: {', '.join(names)}"
            )
            raise ConfigError(f"{prefix}{key}", f"unknown key{hint}", f"{valid}; see rlhf-ray config --explain")
    kwargs = {}
    for name in names:
        if name not in data:
            continue
        tp, value = hints[name], data[name]
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                raise ConfigError(f"{prefix}{name}", "must be a mapping of keys")
            kwargs[name] = _build(tp, value, f"{prefix}{name}.", root)
        else:
            kwargs[name] = _coerce(f"{prefix}{name}", value, tp)
    return cls(**kwargs)


def _suggest(root: type, cls: type, prefix: str, key: str, names: list[str]) -> list[str]:
    if not prefix.endswith("]."):
        return suggest(root, f"{prefix}{key}")
    # inside a list entry (reward.sources[1].functon): the entry's own keys
    return [f"{prefix}{c}" for c in difflib.get_close_matches(str(key), names, n=2, cutoff=0.6)]


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    node = data
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(dotted, f"'{part}' is not a section")
    node[parts[-1]] = value


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """`["ppo.lr=1e-4", "model.quant=4bit"]` -> nested dict; values parsed as YAML scalars."""
    data: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(item, "override must look like section.key=value")
        key, raw = item.split("=", 1)
        if raw.strip() == "":
            raise ConfigError(key.strip(), f"override '{item}' has no value", "write key=VALUE, or key=null for none")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            raise ConfigError(key.strip(), f"value {raw!r} is not a valid YAML scalar") from None
        # YAML reads "1e-4" as a string; accept scientific notation for numbers.
        if isinstance(value, str) and re.fullmatch(r"[-+]?\d+(\.\d*)?[eE][-+]?\d+", value):
            value = float(value)
        _set_dotted(data, key.strip(), value)
    return data


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted keys of a nested dict with their values: {"ppo": {"lr": 1}} -> {"ppo.lr": 1}."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out
