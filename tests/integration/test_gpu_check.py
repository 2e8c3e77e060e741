"""jobs/gpu_check.sh, the GPU pack: run here on CPU at toy width, without Ray; it refuses to fall back
to the CPU when CUDA is asked for, and names a missing package in one line."""

from __future__ import annotations

import json
import os
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


def _pack(tmp_path: Path, python: str, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(Path.home()),
        "PYTHON": python,
        "GPU_WHEELS": str(tmp_path / "wheels"),  # none carried: this machine has what it needs
        "GPU_SITE": str(tmp_path / "site"),
        **{k: v for k, v in os.environ.items() if k.startswith(("RLHF_RAY_", "HF_"))},
    }
    return subprocess.run(
        ["bash", "jobs/gpu_check.sh", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )


def _our_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("gpu_check:")]


def test_gpu_pack_runs_every_check_on_cpu_without_ray(tmp_path):
    out = _pack(
        tmp_path,
        _python_without(tmp_path, "ray"),
        "--model",
        "tiny-neox-shape",
        "--device",
        "cpu",
        "--new-tokens",
        "4",
        "--prompts",
        "2",
        "--run-dir",
        str(tmp_path),
    )
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "gpu_check.jsonl").read_text().splitlines()]
    assert [(r["label"], r["quant"]) for r in rows] == [
        ("20b-8bit", "8bit"),
        ("20b-4bit", "4bit"),
        ("smollm2-8bit", "8bit"),
    ]
    for r in rows:
        assert set(r["phases"]) == {"build", "generate", "experience", "update"}
        assert all(p["peak_bytes"] > 0 for p in r["phases"].values())
        assert r["policy_version"] == 1 and r["generate_tokens_per_s"] > 0 and r["plan_policy_bytes"] > 0
        assert r["oom"] is None and r["dtype"] == "float32"  # fp32 on the CPU; bf16 is the GPU's


def refuses_without_cuda(out: subprocess.CompletedProcess, device: str) -> None:
    assert out.returncode == 2, out.stderr[-2000:]
    (line,) = [ln for ln in _our_lines(out.stderr) if "sees no CUDA device" in ln]  # said once
    assert f"--device {device}" in line and "never falls back" in line
    assert out.stdout == ""  # nothing ran


def test_the_default_device_never_falls_back_to_cpu(tmp_path):
    """auto is the default: the 44-layer shape must not start on the CPU (--device cuda: below)."""
    refuses_without_cuda(_pack(tmp_path, sys.executable, timeout=120), "auto")


def test_missing_packages_are_named_in_one_line(tmp_path):
    out = _pack(tmp_path, _python_without(tmp_path, "bitsandbytes pyarrow accelerate ray"), timeout=120)
    assert out.returncode == 2
    (line,) = _our_lines(out.stderr)
    assert "missing Python packages: " in line
    assert all(name in line for name in ("accelerate", "bitsandbytes", "pyarrow"))
    assert "make gpu-wheels" in line and "Ray is NOT needed" in line
    assert len(_our_lines(out.stderr)) == 1  # said once, not once per run


def test_carried_wheels_install_offline_on_top_of_the_system(tmp_path):
    """A wheel in the carried folder that this Python lacks is installed (no index) and importable by the runs."""
    src = tmp_path / "src"
    (src / "gpu_pack_probe").mkdir(parents=True)
    (src / "gpu_pack_probe" / "__init__.py").write_text("VALUE = 7\n")
    (src / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n'
        '[project]\nname = "gpu_pack_probe"\nversion = "1.0"\n'
    )
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-index",
            "--no-build-isolation",
            "--no-deps",
            "-w",
            str(tmp_path / "wheels"),
            str(src),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    # The runs then refuse for want of CUDA, after the install: the probe shows what they could import.
    out = _pack(tmp_path, sys.executable, "--device", "cuda", timeout=300)
    assert "installed gpu_pack_probe-1.0 into" in out.stderr, out.stderr[-2000:]
    refuses_without_cuda(out, "cuda")
    probe = subprocess.run(
        [sys.executable, "-c", "import gpu_pack_probe; print(gpu_pack_probe.__file__)"],
        env={**os.environ, "PYTHONPATH": str(tmp_path / "site")},
        capture_output=True,
        text=True,
    )
    assert probe.stdout.startswith(str(tmp_path / "site"))


def test_card_verdicts_count_reserved_peaks_and_memory_outside_the_allocator():
    """22.3 GiB (what "24 GB" cards expose) and 24 GiB cards, measured and planned (no GPU needed)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "jobs/gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    args = gpu_check.parse(["--model", "tiny-neox-shape", "--quant", "8bit", "--device", "cpu"])
    cfg = gpu_check.build_config(args)
    probe = gpu_check.PhaseProbe("cuda")
    gib = gpu_check.GIB
    probe.phases = {"generate": {"peak_reserved_bytes": 20 * gib}, "update": {"peak_reserved_bytes": int(22.5 * gib)}}
    cards = gpu_check.verdicts(cfg, probe, outside=gib, oom=False)  # need: 22.5 + 1 = 23.5 GiB
    assert cards["22.3"]["measured_need_gib"] == 23.5 and not cards["22.3"]["measured_fits"]
    assert cards["24"]["measured_fits"]
    assert cards["22.3"]["plan_fits"] and not cards["22.3"]["agree"]  # the toy shape's plan is tiny: they disagree
    assert not gpu_check.verdicts(cfg, probe, outside=0, oom=True)["24"]["measured_fits"]  # out of memory: no card
