#!/usr/bin/env bash
# One prepared GPU check (issue 31), at most 8 minutes on one H100/H200: inference speed of the
# paper-shape teacher, Presto-S, Presto-L and Presto-LS (random weights, 32 s of 44.1 kHz audio,
# batch 1 and 8, fp32 and bf16, eager and compiled), decode timed apart, peak memory.
#   OUT=DIR bash benchmarks/gpu_check.sh    # writes DIR/gpu_check.json (default runs/gpu_check/) and gpu_table.md
#   OUT=DIR bash benchmarks/gpu_check.sh --dry-run  # tiny shapes on the CPU (other options: gpu_check.py --help)
# The python script stops starting rows after --budget-s (420 s) and writes its JSON after every
# row; `timeout` is the backstop that keeps the whole call under 8 minutes.
set -u
cd "$(dirname "$0")/.."
out="${OUT:-runs/gpu_check}"
mkdir -p "$out"
export HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/nvidia-smi.csv" 2>/dev/null || true
timeout --signal=TERM --kill-after=10 465 python benchmarks/gpu_check.py --out "$out" "$@"
rc=$?
if [ -f "$out/gpu_check.json" ]; then
  python benchmarks/gpu_table.py "$out/gpu_check.json" > "$out/gpu_table.md" && cat "$out/gpu_table.md"
fi
exit $rc
