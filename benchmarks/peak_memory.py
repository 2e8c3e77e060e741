"""Wall time and peak memory of a whole command: the summed PSS (and RSS) of its process tree (the
driver, the raylet it starts and every Ray worker), sampled every --every seconds from
/proc/PID/smaps_rollup. PSS splits shared pages between the processes that map them, so the sum
counts a page once; RSS counts it in every process. Linux only.

    .venv/bin/python benchmarks/peak_memory.py -- .venv/bin/rlhf-ray ppo --config configs/default.yaml \
        --run-dir /tmp/solo
    .venv/bin/python benchmarks/peak_memory.py -- .venv/bin/rlhf-ray sweep --config configs/default.yaml \\
        --run-dir /tmp/sw4 --grid 'run.seed=[0,1,2,3]'

Prints one JSON line: {"wall_s", "peak_pss_gib", "peak_rss_gib", "returncode", "command"}."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the process ended while we read
        tree.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    return tree


def tree_of(root: int) -> list[int]:
    tree, out, todo = children(), [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(tree.get(pid, []))
    return out


def memory_kib(pid: int) -> tuple[int, int]:
    """(PSS, RSS) in KiB; (0, 0) for a process that has ended."""
    pss = rss = 0
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                pss = int(line.split()[1])
            elif line.startswith("Rss:"):
                rss = int(line.split()[1])
    except OSError:
        pass
    return pss, rss


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--every", type=float, default=0.5, help="seconds between samples")
    ap.add_argument("command", nargs=argparse.REMAINDER, help="-- the command to run")
    args = ap.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        ap.error("give the command after --")
    start = time.perf_counter()
    proc = subprocess.Popen(command)
    peak_pss = peak_rss = 0
    while proc.poll() is None:
        sums = [memory_kib(pid) for pid in tree_of(proc.pid)]
        peak_pss = max(peak_pss, sum(p for p, _ in sums))
        peak_rss = max(peak_rss, sum(r for _, r in sums))
        time.sleep(args.every)
    gib = 1024**2
    result = {
        "wall_s": round(time.perf_counter() - start, 1),
        "peak_pss_gib": round(peak_pss / gib, 2),
        "peak_rss_gib": round(peak_rss / gib, 2),
        "returncode": proc.returncode,
        "command": command,
    }
    print(json.dumps(result))
    sys.exit(proc.returncode)


if __name__ == "__main__":
    main()
