#!/usr/bin/env bash
# Last device call of 2026-12-02 (~4 min of device time left): the gpu-marked CUDA-graph tests
# on the final graphs code (buffer sets), then the inference benchmark of the final fast path.
set -uo pipefail
source "$(dirname "$0")/setup.sh"
timeout 60 python3 -P -m pytest -m gpu tests/test_loop_graphs.py tests/test_fast_path.py > $OUT/gpu_tests.txt 2>&1
echo "tests rc=$?" >> $OUT/gpu_tests.txt
cd /tmp && timeout 60 anira bench inference --device cuda --repeats 10 --decode-len 0 --json > $OUT/bench_inference_h200_final.json 2>&1
