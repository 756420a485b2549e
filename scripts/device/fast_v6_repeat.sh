#!/usr/bin/env bash
# 2026-12-02 (second session): the batch-64 inference benchmark of the fast_v6 code
# again, twice with 30 repeats each, to see the spread of the core ratio.
set -uo pipefail
source "$(dirname "$0")/setup.sh"
cd /tmp
for i in 1 2; do
  timeout 150 anira bench inference --device cuda --batches 64 --repeats 30 --decode-len 0 --json > $OUT/bench_inference_h200_b64_r30_$i.json 2>> $OUT/bench.err
done
echo done
