"""Per-process set-up for a role, a stage worker or the CLI: torch's thread count and two log filters.

Ray-free, so role classes also run on hosts without Ray. Nothing here runs at import time: the CLI,
`actors.common.init_process` and `stages.common.prepare_worker` call `install_log_filters()`.

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

(transformers' LOAD REPORT of a fresh classification head is held back where the head is expected:
rlhf_ray.models.loading.)"""

from __future__ import annotations

import logging
import os

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


def set_torch_threads(requested: int) -> int:
    """0 = all cores: PPO phases run one after another, so only one role computes at a time."""
    import torch

    threads = requested or os.cpu_count() or 1
    torch.set_num_threads(threads)
    return threads
