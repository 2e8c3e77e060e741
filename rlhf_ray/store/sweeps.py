"""A sweep's directory file, DIR/sweep.json: its runs (name, overrides, state: pending | running |
done | failed | stopped, last checkpointed iteration, error, final figures), rewritten whole on
every change so a reader (`report`, a second terminal) never sees half of one."""

from __future__ import annotations

import json
import time
from pathlib import Path

from rlhf_ray.errors import UserError
from rlhf_ray.store.checkpoint import atomic_write

SWEEP_FILE = "sweep.json"


def read_sweep(sweep_dir: Path) -> dict:
    path = Path(sweep_dir) / SWEEP_FILE
    if not path.is_file():
        raise UserError(f"{sweep_dir} holds no sweep ({SWEEP_FILE} missing)")
    return json.loads(path.read_text())


def is_sweep(path: Path) -> bool:
    return (Path(path) / SWEEP_FILE).is_file()


class SweepFile:
    """DIR/sweep.json, rewritten whole (atomically) on every state change of a run."""

    def __init__(self, sweep_dir: Path, data: dict):
        self.path, self.data = sweep_dir / SWEEP_FILE, data
        self.by_name = {r["name"]: r for r in data["runs"]}

    def set(self, name: str, state: str, **info) -> None:
        run = self.by_name[name]
        run["state"] = state
        for key in ("iteration", "error", "checkpoint"):
            if key in info:
                run[key] = info[key]
        if state in ("running", "done"):
            run.pop("error", None)
        if "summary" in info:
            run["final"] = info["summary"]["final"]
            run["iteration"] = info["summary"]["iterations"]
        self.data["updated"] = time.time()
        self.write()

    def write(self) -> None:
        atomic_write(self.path, json.dumps(self.data, indent=2, default=str).encode())
