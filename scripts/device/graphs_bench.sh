#!/usr/bin/env bash
# One device call, 2026-12-02: issue 6's CUDA graphs of single loop iterations.
#  1. the gpu-marked equivalence tests (graphs vs the eager loop, fast and dense paths);
#  2. anira bench inference on the H200 with graphs (default) and without, alone on the GPU;
#  3. issue 4: a kernel profile of the MANO paper-size training step (scripts/profile_train.py).
# Usage (device machine, repo root): bash scripts/device/graphs_bench.sh   (carry .whl; EAGER=1 adds
# the benchmark without graphs; the second call of the day ran without it, plus an inference profile)
set -uo pipefail
T0=$(date +%s)
export PYTHONUNBUFFERED=1 TORCHINDUCTOR_COMPILE_THREADS=8
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --target /tmp/anira . || exit 1
export PYTHONPATH=/tmp/site PATH=/tmp/anira/bin:$PATH
# -P: the tests import the installed anira (its plugins package is mapped at install time)
PYTHONPATH=/tmp/anira:/tmp/site timeout 150 python3 -P -m pytest -m gpu tests/test_loop_graphs.py tests/test_fast_path.py > $OUT/gpu_tests.txt 2>&1
echo "tests rc=$? at $(( $(date +%s) - T0 )) s" >> $OUT/timeline.txt
export PYTHONPATH=/tmp/anira:/tmp/site
timeout 170 anira bench inference --device cuda --repeats 10 --decode-len 64 --json > $OUT/bench_inference_h200_graphs.json 2> $OUT/bench_graphs.err
echo "bench graphs rc=$? at $(( $(date +%s) - T0 )) s" >> $OUT/timeline.txt
if [ -n "${EAGER:-}" ]; then
  timeout 120 anira bench inference --device cuda --graphs off --repeats 10 --decode-len 0 --json > $OUT/bench_inference_h200_eager.json 2> $OUT/bench_eager.err
  echo "bench eager rc=$? at $(( $(date +%s) - T0 )) s" >> $OUT/timeline.txt
fi
timeout 90 python3 -P scripts/profile_inference.py cuda 64 > $OUT/profile_inference_b64.txt 2>&1
echo "profile inference rc=$? at $(( $(date +%s) - T0 )) s" >> $OUT/timeline.txt
left=$(( 560 - ($(date +%s) - T0) ))
[ $left -gt 60 ] && timeout $left python3 -P scripts/profile_train.py mano anira-o > $OUT/profile_train_mano.txt 2>&1
echo "done at $(( $(date +%s) - T0 )) s" >> $OUT/timeline.txt
