#!/usr/bin/env bash
# 2026-12-02 (second session), first device call: gpu-marked graph tests on the
# current code, then where the fast path's time goes (scripts/diagnose_inference.py).
set -uo pipefail
source "$(dirname "$0")/setup.sh"
nvidia-smi --query-gpu=name,memory.used,utilization.gpu --format=csv > $OUT/gpu.txt 2>&1
timeout 120 python3 -P -m pytest -q -m gpu tests/test_loop_graphs.py tests/test_fast_path.py > $OUT/gpu_tests.txt 2>&1
echo "tests rc=$?" >> $OUT/gpu_tests.txt
timeout 150 python3 -P scripts/diagnose_inference.py 64 > $OUT/diagnose_b64.json 2> $OUT/diagnose_b64.err
timeout 60 python3 -P scripts/diagnose_inference.py 1 > $OUT/diagnose_b1.json 2> $OUT/diagnose_b1.err
echo done
