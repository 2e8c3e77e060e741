"""Per-process set-up for a role, a stage worker or the CLI: torch's thread count, log filters and a
cheaper import of bitsandbytes.

Ray-free, so role classes also run on hosts without Ray. Nothing here runs at import time: the CLI,
`actors.common.init_process`, `stages.common.prepare_worker` and every Ray worker we start (its
worker_process_setup_hook) call `set_up_process()`.

bitsandbytes wraps a few of its kernels in `torch.compile` when it is imported. Building those
wrappers loads inductor's compiler and networkx, ~550 modules and 2-2.5 s of CPU in every process
that loads a quantized model or imports peft (which imports bitsandbytes), on the 2-core EPYC; our
CPU paths never call those kernels. `defer_bitsandbytes_compile()` builds each wrapper at its first
call instead: `torch.compile` compiles at the first call either way, so nothing else changes.

The filters drop log lines every run printed that say nothing a user can act on (by exact
message; the loggers keep everything else):
- Ray 2.59+ warns on every fresh local cluster that token authentication is on. A cluster we
  start with address="local" lives only as long as the run; what does matter (a `ray job submit`
  client needs RAY_AUTH_MODE=token and the cluster's token) is in the README.
- bitsandbytes on a CPU with AVX512-BF16 tries the optional `kernels` package, which downloads a
  4-bit kernel from a hub at run time, and warns when it is missing; its built-in fallback is the
  path that runs. Said once per process at debug level instead.
- Before that warning, the `kernels` package (a transformers dependency) says, in every process that
  imports bitsandbytes with the hub offline (HF_HUB_OFFLINE=1, as every run sets), that it skips
  the hub's publisher trust check for that kernel: nothing is downloaded or run either way.

A Ray worker we start runs `set_up_worker()` instead (the hook): the same, and it marks the process as a
fresh worker. When the role or stage task it hosts then sets itself up (`freeze_startup()`, after
torch is imported), the objects imported so far move to the garbage collector's permanent generation
(`gc.freeze()`): the model load's imports and allocations that follow trigger many full collections,
and those no longer rescan torch's objects. 8% of a role process's start-up CPU on the 2-core EPYC
(`benchmarks/role_start.py`); the suite starts about a hundred such processes. Once per worker, and only
in a Ray worker: a frozen object that later becomes cyclic garbage is never freed, which in a process
that builds and drops models (a notebook, a test session) would leak them.

(transformers' LOAD REPORT of a fresh classification head is held back where the head is expected:
rlhf_ray.models.loading.)"""

from __future__ import annotations

import functools
import gc
import importlib.abc
import importlib.machinery
import logging
import os
import sys

RAY_TOKEN_LOGGER = "ray._private.authentication.authentication_token_setup"
RAY_TOKEN_MESSAGE = "Token authentication is enabled for this Ray cluster"
BNB_LOGGER = "bitsandbytes.backends.cpu.ops"
BNB_MESSAGE = "Failed to load CPU gemm_4bit_forward"
KERNELS_LOGGER = "kernels._internals.hf_hub"
KERNELS_MESSAGE = "Skipping publisher trust check for "

log = logging.getLogger(__name__)


class _Drop(logging.Filter):
    def __init__(self, prefix: str, note: str | None = None):
        super().__init__()
        self.prefix, self.note = prefix, note

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith(self.prefix):
            return True
        if self.note:
            log.debug(self.note)
            self.note = None  # once per process
        return False


def install_log_filters() -> None:
    for name, flt in (
        (RAY_TOKEN_LOGGER, _Drop(RAY_TOKEN_MESSAGE)),
        (
            BNB_LOGGER,
            _Drop(BNB_MESSAGE, "bitsandbytes: optional `kernels` package absent; using the built-in CPU 4-bit kernel"),
        ),
        (KERNELS_LOGGER, _Drop(KERNELS_MESSAGE, "kernels: hub offline, no kernel fetched (no trust check needed)")),
    ):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _Drop) for f in logger.filters):
            logger.addFilter(flt)


def set_up_process() -> None:
    install_log_filters()
    defer_bitsandbytes_compile()


_fresh_worker = False


def set_up_worker() -> None:
    """Ray's worker_process_setup_hook for the workers we start: set_up_process, and a mark that
    freeze_startup may freeze this process's imports (it has built no model and dropped none)."""
    global _fresh_worker
    set_up_process()
    _fresh_worker = True


def freeze_startup() -> bool:
    """In a fresh Ray worker, once: what is imported so far leaves the collector's scans (gc.freeze)."""
    global _fresh_worker
    if not _fresh_worker:
        return False
    _fresh_worker = False
    gc.freeze()
    return True


class _DeferCompile(importlib.abc.MetaPathFinder):
    """Finds bitsandbytes, for a loader that runs its module with `torch.compile` deferred. Every
    lookup gets one (transformers' availability checks call find_spec before the import does)."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "bitsandbytes":
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _DeferCompileLoader(spec.loader)
        return spec


class _DeferCompileLoader(importlib.abc.Loader):
    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        import torch

        module.__loader__ = module.__spec__.loader = self.loader  # the real loader from here on
        eager = torch.compile
        torch.compile = functools.partial(_compile_at_first_call, eager)
        try:
            self.loader.exec_module(module)
        finally:
            torch.compile = eager


def _compile_at_first_call(eager, model=None, **kwargs):
    """`torch.compile(fn, **kwargs)` (or its decorator form) that calls `eager` at fn's first call."""
    if model is None:
        return lambda fn: _compile_at_first_call(eager, fn, **kwargs)
    compiled = None

    @functools.wraps(model)
    def call(*args, **kw):
        nonlocal compiled
        if compiled is None:
            compiled = eager(model, **kwargs)
        return compiled(*args, **kw)

    return call


def defer_bitsandbytes_compile() -> None:
    """Before bitsandbytes is imported: its import builds no torch.compile wrapper until one is called."""
    if "bitsandbytes" not in sys.modules and not any(isinstance(f, _DeferCompile) for f in sys.meta_path):
        sys.meta_path.insert(0, _DeferCompile())


def set_torch_threads(requested: int) -> int:
    """0 = all cores: PPO phases run one after another, so only one role computes at a time."""
    import torch

    threads = requested or os.cpu_count() or 1
    torch.set_num_threads(threads)
    return threads
