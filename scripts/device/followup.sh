#!/usr/bin/env bash
# One device call (<= 9.5 min) for what the 2026-12-01 session could not finish:
#  1. issue 6: the inference benchmark of the current fast path on the H200;
#  2. issue 4: brevo-anira-e / brevo-anira-o with the ref-brevo recipe, each ALONE on the
#     GPU (in the shared session each ran 8-9 steps/s; alone the CUDA-graph step is ~8 ms),
#     stopping at 97 % in-distribution exact match; exported and packed under $OUT.
# Usage (device machine, repo root): bash scripts/device/followup.sh   (carry .whl)
set -uo pipefail
T0=$(date +%s)
export PYTHONUNBUFFERED=1 ANIRA_CACHE_DIR=/tmp/anira-cache TORCHINDUCTOR_COMPILE_THREADS=8
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --target /tmp/anira . || exit 1
export PYTHONPATH=/tmp/anira:/tmp/site PATH=/tmp/anira/bin:$PATH
REPO=$(pwd); cd /tmp
timeout 150 anira bench inference --device cuda --repeats 10 --decode-len 64 --json > $OUT/bench_inference_h200.json 2>&1
for policy in anira-e anira-o; do
  left=$(( ${BUDGET:-540} - ($(date +%s) - T0) - 60 ))
  [ $left -gt 60 ] || break
  timeout -s TERM $(( left / 2 )) anira train --preset ref-brevo --policy $policy --device cuda \
    --set train.num_workers=16 --quiet --json --out /tmp/final/brevo-$policy > /tmp/final-brevo-$policy.json 2>&1
  echo "anira train --preset ref-brevo --policy $policy --device cuda --set train.num_workers=16" > /tmp/final/brevo-$policy.cmd
done
bash $REPO/scripts/device/collect.sh /tmp/final $OUT runs
echo "done at $(( $(date +%s) - T0 )) s"
