"""One writer per run directory and cache entry (flock, holder named), and the stop-signal rules:
a stop inside deferred() waits for the block, a second signal exits at once."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from rlhf_ray.cli import main
from rlhf_ray.runtime.rundir import LOCK
from rlhf_ray.runtime.stopping import StopRequested, deferred, handling_stops
from rlhf_ray.store.locks import FileLock, LockHeld, entry_lock

REPO = Path(__file__).resolve().parents[2]
SMOKE = "configs/smoke.yaml"


def hold_lock(path: Path) -> subprocess.Popen:
    """Another process holding `path`'s lock until killed (prints 'held' once it has it)."""
    code = (
        "import sys, time; from pathlib import Path; from rlhf_ray.store.locks import FileLock; "
        "FileLock(Path(sys.argv[1])).acquire(); print('held', flush=True); time.sleep(120)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(path)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_writer_of_a_run_directory_gets_one_line_naming_the_holder(tmp_path, capsys):
    run = tmp_path / "run"
    holder = hold_lock(run / LOCK)
    try:
        code = main(["ppo", "--config", SMOKE, "--run-dir", str(run)])
    finally:
        holder.kill()
        holder.wait()
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert f"pid {holder.pid} on {socket.gethostname()}" in err[0] and "in use" in err[0]
    assert sorted(p.name for p in run.iterdir()) == [LOCK]  # nothing written by the refused run


def test_a_lock_dies_with_its_holder(tmp_path):
    path = tmp_path / "x.lock"
    holder = hold_lock(path)
    with pytest.raises(LockHeld) as held:
        FileLock(path).acquire()
    assert held.value.holder["pid"] == holder.pid
    holder.send_signal(signal.SIGKILL)  # no clean-up ran: the kernel drops the lock
    holder.wait()
    FileLock(path).acquire().release()


def test_a_cache_entry_writer_waits_for_the_first(tmp_path):
    target = tmp_path / "entry"
    order = []

    def first():
        with entry_lock(target):
            order.append("first in")
            time.sleep(0.5)
            order.append("first out")

    t = threading.Thread(target=first)
    t.start()
    while not order:
        time.sleep(0.01)
    with entry_lock(target):
        order.append("second in")
    t.join()
    assert order == ["first in", "first out", "second in"]


def test_a_stop_inside_deferred_waits_for_the_block(tmp_path):
    before = signal.getsignal(signal.SIGTERM)
    done = []
    with pytest.raises(StopRequested) as stop, handling_stops():
        with deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.1)  # the handler ran here, and held the stop
            done.append("committed and logged")
    assert done == ["committed and logged"] and stop.value.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is before  # handlers restored for whoever called main()


SLOW_CLEANUP = """
import time
from rlhf_ray.runtime.stopping import StopRequested, handling_stops
with handling_stops():
    try:
        print("running", flush=True)
        time.sleep(60)
    except StopRequested:
        print("cleaning up", flush=True)
        time.sleep(60)  # a clean-up that hangs
"""


def test_a_second_signal_exits_at_once():
    proc = subprocess.Popen(
        [sys.executable, "-c", SLOW_CLEANUP], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "running"
        proc.send_signal(signal.SIGINT)
        assert proc.stdout.readline().strip() == "cleaning up"
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 128 + signal.SIGTERM and time.monotonic() - t0 < 20
        assert "second SIGTERM" in proc.stderr.read()
    finally:
        proc.kill()
