#!/usr/bin/env bash
# 2026-12-02 (second session): the planned depth order computed at the second iteration (overlapping the first);
# gpu tests, the inference benchmark over batch sizes (where the fast path starts
# to pay on this GPU), and the batch-64 diagnosis.
set -uo pipefail
source "$(dirname "$0")/setup.sh"
timeout 120 python3 -P -m pytest -q -p no:warnings -m gpu tests/test_loop_graphs.py tests/test_fast_path.py > $OUT/gpu_tests.txt 2>&1
echo "tests rc=$?" >> $OUT/gpu_tests.txt
(cd /tmp && timeout 200 anira bench inference --device cuda --batches 1,8,64 --repeats 10 --decode-len 64 --json > $OUT/bench_inference_h200_v6.json 2> $OUT/bench.err)
timeout 150 python3 -P scripts/diagnose_inference.py 64 > $OUT/diagnose_b64.json 2> $OUT/diagnose_b64.err
echo done
