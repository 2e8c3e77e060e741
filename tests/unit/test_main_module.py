"""`python -m rlhf_ray` is the console script (how `ray job submit` entrypoints often run it)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_python_m_rlhf_ray_runs_the_cli(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "rlhf_ray", "ppo", "--run-dir", str(tmp_path / "r"), "ppo.lr=-1"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2 and "config key 'ppo.lr': must be > 0" in out.stderr
