"""jobs/gpu_check.sh: the fused 20B-shaped iteration script, run here on CPU at toy width, without Ray."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# Runs a script with chosen packages made unimportable (as on a GPU host that lacks them).
BLOCKING_PYTHON = """#!/bin/sh
exec {python} -c "import runpy, sys; [sys.modules.__setitem__(m, None) for m in '{blocked}'.split()]; \
sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')" "$@"
"""


def _python_without(tmp_path: Path, blocked: str) -> str:
    wrapper = tmp_path / f"python-without-{blocked.replace(' ', '-')}"
    wrapper.write_text(BLOCKING_PYTHON.format(python=sys.executable, blocked=blocked))
    wrapper.chmod(0o755)
    return str(wrapper)


def test_gpu_check_runs_both_precisions_on_cpu_without_ray(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "PYTHON": _python_without(tmp_path, "ray"), "HOME": str(Path.home())}
    out = subprocess.run(
        [
            "bash",
            "jobs/gpu_check.sh",
            "--model",
            "tiny-neox-shape",
            "--device",
            "cpu",
            "--new-tokens",
            "4",
            "--run-dir",
            str(tmp_path),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "gpu_check.jsonl").read_text().splitlines()]
    assert [r["quant"] for r in rows] == ["8bit", "4bit"]
    for r in rows:
        assert set(r["phases"]) == {"build", "generate", "experience", "update"}
        assert all(p["peak_bytes"] > 0 for p in r["phases"].values())
        assert r["policy_version"] == 1 and r["generate_tokens_per_s"] > 0 and r["plan_policy_bytes"] > 0


def test_gpu_check_names_what_is_missing(tmp_path):
    out = subprocess.run(
        [_python_without(tmp_path, "bitsandbytes ray"), "jobs/gpu_check.py", "--model", "tiny-neox-shape"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2
    assert "missing Python packages: bitsandbytes" in out.stderr and "Ray is NOT needed" in out.stderr
