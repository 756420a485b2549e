#!/usr/bin/env bash
# Last device call of 2026-12-02 (~4 min of device time left): the gpu-marked CUDA-graph tests
# on the final graphs code (buffer sets), then the inference benchmark of the final fast path.
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --target /tmp/anira . || exit 1
export PYTHONPATH=/tmp/anira:/tmp/site PATH=/tmp/anira/bin:$PATH
timeout 60 python3 -P -m pytest -m gpu tests/test_loop_graphs.py tests/test_fast_path.py > $OUT/gpu_tests.txt 2>&1
echo "tests rc=$?" >> $OUT/gpu_tests.txt
cd /tmp && timeout 60 anira bench inference --device cuda --repeats 10 --decode-len 0 --json > $OUT/bench_inference_h200_final.json 2>&1
