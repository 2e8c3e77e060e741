#!/usr/bin/env bash
# The GPU pack, on a bare GPU machine (CUDA torch, transformers, peft, accelerate, pyarrow; no Ray,
# no bitsandbytes, no package registry). Installs the wheels carried in gpu-wheels/ (`make gpu-wheels`)
# offline into a target folder on top of the system torch, then runs, each in its own process (clean
# peaks): one fused PPO iteration on the GPT-NeoX-20B shape in 8-bit and in NF4, and one on the SmolLM2
# shape with its tokens/s. One JSON line per run (stdout and RUN_DIR/gpu_check.jsonl); see docs/gpu.md.
#   bash jobs/gpu_check.sh --run-dir runs/gpu-check
#   bash jobs/gpu_check.sh --model tiny-neox-shape --device cpu     # extra arguments go to every run
# Environment: PYTHON (python3), GPU_WHEELS (gpu-wheels), GPU_SITE (where they are installed),
# QUANTS (the 20B precisions: "8bit 4bit"), SMOLLM2 (the SmolLM2 model, "none" to skip it).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
WHEELS="${GPU_WHEELS:-gpu-wheels}"
SITE="${GPU_SITE:-${TMPDIR:-/tmp}/rlhf-ray-gpu-site}"
case "$SITE" in /*) ;; *) SITE="$PWD/$SITE" ;; esac

command -v "$PYTHON" >/dev/null || { echo "gpu_check: no '$PYTHON' on PATH (set PYTHON=/path/to/python3)" >&2; exit 2; }

# Install each carried wheel whose version this Python does not already have (pip, no index, no deps).
wanted=()
for whl in "$WHEELS"/*.whl; do
  [ -e "$whl" ] || continue
  name=$(basename "$whl" | cut -d- -f1)
  version=$(basename "$whl" | cut -d- -f2)
  have=$("$PYTHON" -c 'import importlib.metadata as m, sys; print(m.version(sys.argv[1]))' "$name" 2>/dev/null || true)
  [ "$have" = "$version" ] || wanted+=("$whl")
done
if [ "${#wanted[@]}" -gt 0 ]; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "${wanted[@]}" \
    || { echo "gpu_check: pip could not install ${wanted[*]} into $SITE (see above)" >&2; exit 2; }
  echo "gpu_check: installed $(for w in "${wanted[@]}"; do basename "$w" | cut -d- -f1-2; done | tr '\n' ' ')into $SITE" >&2
fi
if [ -d "$SITE" ]; then export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"; fi

status=0
run() {
  local rc=0
  "$PYTHON" jobs/gpu_check.py "$@" || rc=$?
  if [ "$rc" -eq 2 ]; then exit 2; fi  # a missing package or no CUDA: the same for every run, said once
  [ "$rc" -eq 0 ] || status=$rc
}
for quant in ${QUANTS:-8bit 4bit}; do
  run --model gpt-neox-20b-shape --quant "$quant" --label "20b-$quant" "$@"
done
if [ "${SMOLLM2:-smollm2-135m-shape}" != none ]; then
  run --model "${SMOLLM2:-smollm2-135m-shape}" --quant 8bit --prompts 16 --new-tokens 64 --label smollm2-8bit "$@"
fi
exit "$status"
