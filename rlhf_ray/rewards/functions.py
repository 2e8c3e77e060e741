"""Reward functions: `path/to/file.py:name` or `package.module:name`, called TRL-style as
fn(prompts=..., completions=..., **columns) -> list[float | None] (an `async def` is awaited).

A function given by a file reaches scorer nodes without a shared disk: the driver reads the
file's text into a FunctionRef (it travels in the scorer's constructor args); each node writes it
into its cache under a content-hashed name and imports it from there. A module name travels as
is: that module must be importable on every node (installed, or shipped with Ray's runtime_env)."""

from __future__ import annotations

import asyncio
import difflib
import hashlib
import importlib
import importlib.util
import inspect
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from rlhf_ray.errors import ConfigError
from rlhf_ray.rewards.base import RewardBatch, RewardSourceError, to_values


@dataclass(frozen=True)
class FunctionRef:
    key: str  # the config key that named it, for messages (e.g. reward.sources[1].function)
    spec: str  # as configured
    name: str  # the function's name in its module
    module: str | None = None  # `package.module:name`
    filename: str | None = None  # `file.py:name`: the file's name (readable cache entries, messages)
    source: str | None = None  # `file.py:name`: the file's text

    @property
    def sha256(self) -> str:
        return hashlib.sha256((self.source or "").encode()).hexdigest()


def is_file_spec(where: str) -> bool:
    return where.endswith(".py") or "/" in where or os.sep in where


def function_ref(key: str, spec: str) -> FunctionRef:
    """Driver side: parse the spec and, for a file, read its text (ConfigError if it does not exist)."""
    where, _, name = spec.rpartition(":")
    if not is_file_spec(where):
        return FunctionRef(key, spec, name, module=where)
    path = Path(where).expanduser()
    if not path.is_file():
        raise ConfigError(
            key, f"file {where} does not exist", "give the path of a .py file (relative to the current directory)"
        )
    return FunctionRef(key, spec, name, filename=path.name, source=path.read_text())


def load_function(ref: FunctionRef, cache_dir: Path) -> Callable:
    """The callable on this node; ConfigError naming the key if it cannot be imported, is missing or not callable."""
    module = _import_file(ref, Path(cache_dir)) if ref.source is not None else _import_module(ref)
    fn = getattr(module, ref.name, None)
    if fn is None:
        names = [n for n, v in vars(module).items() if callable(v) and not n.startswith("_")]
        close = difflib.get_close_matches(ref.name, names, n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        where = ref.filename or ref.module
        raise ConfigError(ref.key, f"{where} has no function {ref.name!r}{hint}", "name a function defined there")
    if not callable(fn):
        raise ConfigError(
            ref.key,
            f"{ref.spec} is a {type(fn).__name__}, not a function",
            "name a function fn(prompts, completions, **columns) -> list[float | None]",
        )
    return fn


def _import_file(ref: FunctionRef, cache_dir: Path):
    digest = ref.sha256[:16]
    stem = re.sub(r"\W", "_", Path(ref.filename).stem)
    module_name = f"_rlhf_ray_reward_{stem}_{digest}"
    if module_name in sys.modules:  # a second scorer in this process, or a re-check
        return sys.modules[module_name]
    path = cache_dir / "reward_functions" / f"{stem}-{digest}.py"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp-{os.getpid()}")
        tmp.write_text(ref.source)
        os.replace(tmp, path)  # concurrent scorers on one node never import a half-written file
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # before running it: dataclasses and pickling look modules up there
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001 - the user's module: any error is theirs to fix
        del sys.modules[module_name]
        raise ConfigError(
            ref.key, f"importing {ref.filename} failed: {type(exc).__name__}: {_first_line(exc)}", "fix that file"
        ) from None
    return module


def _import_module(ref: FunctionRef):
    try:
        return importlib.import_module(ref.module)
    except ImportError as exc:
        raise ConfigError(
            ref.key,
            f"module {ref.module} cannot be imported ({_first_line(exc)})",
            "install it on every node, or give a file: path/to/file.py:function",
        ) from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def call(fn: Callable, batch: RewardBatch) -> Any:
    out = fn(prompts=batch.prompts, completions=batch.completions, **batch.columns)
    if inspect.isawaitable(out):
        out = asyncio.run(_wait(out))
    return out


async def _wait(awaitable):
    return await awaitable


class FunctionSource:
    """A reward function as a source: one batched call per rollout shard."""

    def __init__(self, name: str, ref: FunctionRef, cache_dir: Path):
        self.name, self.ref = name, ref
        self.fn = load_function(ref, cache_dir)

    def __call__(self, batch: RewardBatch):
        try:
            values = call(self.fn, batch)
        except Exception as exc:  # noqa: BLE001 - the user's function: report it, with the row that breaks it
            raise RewardSourceError(
                f"reward source {self.name!r} ({self.ref.spec}) raised {type(exc).__name__}: {_first_line(exc)} "
                f"{self._culprit(batch)}"
            ) from None
        return to_values(self.name, values, batch)

    def _culprit(self, batch: RewardBatch) -> str:
        """Which row breaks it: the function again on one row at a time, up to the first that raises."""
        for i in range(len(batch)):
            try:
                call(self.fn, batch.row(i))
            except Exception:  # noqa: BLE001
                return f"on {batch.describe(i)}"
        return f"on the batch of {len(batch)} (no single row raises alone)"
