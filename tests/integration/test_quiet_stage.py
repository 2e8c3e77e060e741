"""The reward stage as `make run` runs it, on the embedded MiniLM and IMDB, in a fresh process set up
as the CLI and every Ray worker are (log filters, INFO logging, the hub offline), without Ray: its
whole output, stderr included, has no library table or trust-check line, and says what the stage
does before its first step. A few reviews and one step: seconds, not the stage's minutes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

STAGE = """
import logging, sys

logging.basicConfig(level="INFO", format="%(levelname)s %(name)s: %(message)s")  # as the CLI does
from rlhf_ray.process import install_log_filters

install_log_filters()  # the CLI, and every Ray worker (placement's worker_process_setup_hook)
from rlhf_ray.config.load import load_config
from rlhf_ray.stages import reward

cfg = load_config("configs/default.yaml", sys.argv[1:])
r = cfg.reward.resolved()
log = logging.getLogger("rlhf_ray.stages.reward")
log.info(reward.plan_line(r, 1))  # what stages.reward.run says before the task starts
import bitsandbytes  # every actor imports it with peft; on AVX512-BF16 CPUs it asks `kernels` for a kernel

for kind, payload in reward.train_reward(cfg):  # the Ray task's body; stream_task logs its "info" lines
    if kind == "info":
        log.info(payload)
    elif kind == "step":
        print("step", payload["step"], flush=True)
"""
NOISE = ("MISSING", "LOAD REPORT", "publisher trust check", "Consider training", "Traceback", "gemm_4bit")


def test_the_reward_stage_says_what_it_does_and_no_library_noise():
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            STAGE,
            "reward.train_size=8",
            "reward.eval_size=8",
            "reward.train_batch_size=8",
            "reward.epochs=1",
            "cluster.torch_threads=1",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-3000:]
    assert not [line for line in text.splitlines() if any(n in line for n in NOISE)], text
    ours = [line for line in out.stderr.splitlines() if "reward stage:" in line]
    assert len(ours) == 2, text
    assert "training the sentiment classifier on minilm-l6" in ours[0]
    assert "a new 2-label head on minilm-l6 (classifier.bias, classifier.weight start random" in ours[1]
    assert "no held-out pass before the first step" in ours[1]
    assert out.stdout.splitlines() == ["step 1"]
