#!/usr/bin/env bash
# Issue 17 item 4, for a session with an H100/H200-class GPU: one short, prepared run (about 5 minutes).
#   1. the CUDA-graph test (skipped on CPU): the static step is captured and replayed, float32 tokens exact;
#   2. float32 (c) and bfloat16 (d) on 4096 features, with the full-forward argmax check (rows equal);
#   3. a full 32k sweep of GPT-2-small shapes, (c) and (d), timed (target: under 10 s), no check.
# Needs a CUDA build of torch 2.13 and the project's dependencies; run from the repository root.
# Results go to $OUT (or benchmarks/results): sweep_speed_cuda_4096.json, sweep_speed_cuda_32k.json.
set -euo pipefail
out="${OUT:-benchmarks/results}"
mkdir -p "$out"
export HF_HUB_OFFLINE=1 PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python -m pytest -q -x tests/test_engine_edges.py -k "cuda" 2>&1 | tee "$out/cuda_tests.txt"
python benchmarks/sweep_speed.py --device cuda --contenders cd --features 4096 --repeats 2 --no-profile \
    --out "$out/sweep_speed_cuda_4096.json"
python benchmarks/sweep_speed.py --device cuda --contenders cd --features 32768 --repeats 2 --no-check \
    --out "$out/sweep_speed_cuda_32k.json"
