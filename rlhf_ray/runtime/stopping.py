"""Stop signals: SIGINT (Ctrl-C) and SIGTERM (`ray job stop`, `kill`, a scheduler) end a run cleanly.

The first signal raises `StopRequested` in the main thread, so the driver's `finally` blocks run:
the last completed iteration is checkpointed, the metric sinks closed, the actors and the
placement group released. A second signal exits at once (exit status 128 + signal number), for
when the clean-up itself hangs. Inside `deferred()` (the few lines that commit an iteration and
log it), the first signal is held until the block ends, so a stop never separates an iteration's
checkpointable state from its metrics line.

`ray.init` installs its own SIGTERM handler (it calls sys.exit), so code that starts or attaches
to Ray calls `reclaim()` afterwards to put ours back."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequested(KeyboardInterrupt):
    """A stop signal arrived; `checkpoint` is set by the driver to what it saved (or None)."""

    def __init__(self, signum: int):
        self.signum = signum
        self.name = signal.Signals(signum).name
        self.checkpoint: str | None = None
        self.iteration = 0
        super().__init__(f"stopped by {self.name}")


class _State:
    installed = False
    previous: dict = {}
    stopping: int | None = None  # the first signal's number, once one arrived
    pending = False  # a signal arrived inside deferred(): raise when the block ends
    depth = 0


_state = _State()


def _handler(signum, frame) -> None:
    if _state.stopping is not None:
        # A second signal: the clean-up is not wanted (or hangs). No finally blocks, no atexit.
        sys.stderr.write(f"rlhf-ray: second {signal.Signals(signum).name}: exiting now\n")
        sys.stderr.flush()
        os._exit(128 + signum)
    _state.stopping = signum
    if _state.depth > 0:
        _state.pending = True
        return
    raise StopRequested(signum)


def _install_handlers() -> None:
    for sig in SIGNALS:
        signal.signal(sig, _handler)


@contextlib.contextmanager
def handling_stops():
    """Turn SIGINT/SIGTERM into StopRequested for the duration (main thread only; elsewhere, e.g.
    main() called from a worker thread, the process's handlers stay as they are)."""
    if threading.current_thread() is not threading.main_thread() or _state.installed:
        yield
        return
    _state.previous = {sig: signal.getsignal(sig) for sig in SIGNALS}
    _state.installed, _state.stopping, _state.pending, _state.depth = True, None, False, 0
    _install_handlers()
    try:
        yield
    finally:
        for sig, handler in _state.previous.items():
            signal.signal(sig, handler)
        _state.installed = False


def reclaim() -> None:
    """Re-install our handlers (after ray.init replaced the SIGTERM one) while handling_stops is active."""
    if _state.installed and threading.current_thread() is threading.main_thread():
        _install_handlers()


@contextlib.contextmanager
def deferred():
    """Hold a stop signal until the block ends (it is raised then, unless an error is already on its way)."""
    _state.depth += 1
    try:
        yield
    finally:
        _state.depth -= 1
    if _state.depth == 0 and _state.pending:
        _state.pending = False
        raise StopRequested(_state.stopping or signal.SIGINT)


def stop_requested() -> bool:
    return _state.stopping is not None
