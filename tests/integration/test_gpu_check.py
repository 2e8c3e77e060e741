"""jobs/gpu_check.sh: the fused 20B-shaped iteration script, run here on CPU at toy width (no Ray)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_gpu_check_runs_both_precisions_on_cpu_without_ray(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable}
    out = subprocess.run(["bash", "jobs/gpu_check.sh", "--model", "tiny-neox-shape", "--device", "cpu",
                          "--new-tokens", "4", "--run-dir", str(tmp_path)], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "gpu_check.jsonl").read_text().splitlines()]
    assert [r["quant"] for r in rows] == ["8bit", "4bit"]
    for r in rows:
        assert set(r["phases"]) == {"build", "generate", "experience", "update"}
        assert all(p["peak_bytes"] > 0 for p in r["phases"].values())
        assert r["policy_version"] == 1 and r["generate_tokens_per_s"] > 0 and r["plan_policy_bytes"] > 0


def test_gpu_check_names_what_is_missing(tmp_path):
    code = ("import sys, runpy; sys.modules['bitsandbytes'] = None; sys.modules['ray'] = None; "
            "sys.argv = ['gpu_check.py', '--model', 'tiny-neox-shape']; runpy.run_path('jobs/gpu_check.py', run_name='__main__')")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "missing Python packages: bitsandbytes" in out.stderr and "Ray is NOT needed" in out.stderr


def test_fused_iteration_needs_no_ray(tmp_path):
    code = ("import sys, runpy; sys.modules['ray'] = None; "  # any `import ray` now fails
            "sys.argv = ['gpu_check.py', '--model', 'tiny-neox-shape', '--device', 'cpu', '--new-tokens', '2']; "
            "runpy.run_path('jobs/gpu_check.py', run_name='__main__')")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout.strip().splitlines()[-1])["policy_version"] == 1
