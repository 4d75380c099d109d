#!/usr/bin/env bash
# Issue 17 item 4, for a session with an H100/H200-class GPU: one short, prepared run (about 5 minutes).
#   1. the CUDA-graph test (skipped without CUDA): the static step is captured and replayed, float32 exact;
#   2. float32 (c) and bfloat16 (d) on 4096 features, with the full-forward argmax check (rows equal);
#   3. a full 32k sweep of GPT-2-small shapes, (c) and (d), timed (target: under 10 s), no check.
# Needs a CUDA build of torch 2.13 and the project's dependencies; run from the repository root.
# Results go to $OUT (or benchmarks/results): sweep_speed_cuda_check.json, sweep_speed_cuda_full.json.
# A smoke test of the script itself on CPU: DEVICE=cpu CONTENDERS=c CHECK_FEATURES=16 FULL_FEATURES=32 bash $0
set -euo pipefail
out="${OUT:-benchmarks/results}"
device="${DEVICE:-cuda}"
contenders="${CONTENDERS:-cd}"
mkdir -p "$out"
export HF_HUB_OFFLINE=1 PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
fi
python -m pytest -q -x tests/test_engine_edges.py -k "cuda" 2>&1 | tee "$out/cuda_tests.txt"
python benchmarks/sweep_speed.py --device "$device" --contenders "$contenders" \
    --features "${CHECK_FEATURES:-4096}" --repeats 2 --no-profile --out "$out/sweep_speed_${device}_check.json"
python benchmarks/sweep_speed.py --device "$device" --contenders "$contenders" \
    --features "${FULL_FEATURES:-32768}" --repeats 2 --no-check --out "$out/sweep_speed_${device}_full.json"
