#!/usr/bin/env bash
# One fused PPO iteration on the GPT-NeoX-20B-shaped model, in 8-bit and in 4-bit, under a 24 GB cap.
# Each precision runs in its own process (clean peaks). Needs torch, transformers, peft, bitsandbytes,
# safetensors, tokenizers, pyyaml; NOT Ray. Extra arguments go to jobs/gpu_check.py, e.g.
#   bash jobs/gpu_check.sh --model gpt-neox-20b-shape-4l --device cpu
# QUANTS="4bit" restricts the precisions; PYTHON picks the interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
status=0
for quant in ${QUANTS:-8bit 4bit}; do
  "$PYTHON" jobs/gpu_check.py --quant "$quant" "$@" || status=$?
done
exit "$status"
