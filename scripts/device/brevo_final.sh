#!/usr/bin/env bash
# One device call (<= 9.5 min), 2026-12-02 session:
#  1. issue 4: brevo-anira-e and brevo-anira-o with the ref-brevo recipe, the two of them
#     side by side on the GPU under CUDA MPS (the 2026-12-01 runs shared it with 14 others and
#     ran out of device time at 92 %), each stopping at 97 % in-distribution exact match or
#     SIGTERM (which saves) at the deadline; exported and packed under $OUT;
#  2. issue 6: the inference benchmark of the current fast path on the H200, alone, MPS off.
# Usage (device machine, repo root): bash scripts/device/brevo_final.sh   (carry .whl)
# Env: POLICIES (default "anira-e anira-o"), TRAIN_S (330), NO_BENCH=1 skips step 2.
# Second call of the day: POLICIES="fixed anira-e anira-o" TRAIN_S=400 NO_BENCH=1, after ref-brevo
# moved to N 3-5 (the first call's anira runs plateaued at 90-92 % on N 3-6: see checkpoints/README.md).
set -uo pipefail
T0=$(date +%s)
export PYTHONUNBUFFERED=1 ANIRA_CACHE_DIR=/tmp/anira-cache TORCHINDUCTOR_COMPILE_THREADS=8
source "$(dirname "$0")/setup.sh"
REPO=$(pwd); cd /tmp; mkdir -p /tmp/final
nvidia-cuda-mps-control -d && echo "MPS on" > $OUT/timeline.txt
TRAIN_S=${TRAIN_S:-330}
for policy in ${POLICIES:-anira-e anira-o}; do
  cmd="anira train --preset ref-brevo --policy $policy --device cuda --set train.num_workers=8"
  echo "$cmd" > /tmp/final/brevo-$policy.cmd
  timeout -s TERM $TRAIN_S $cmd --quiet --json --out /tmp/final/brevo-$policy > $OUT/train-brevo-$policy.json 2>&1 &
done
wait
echo "training done at $(( $(date +%s) - T0 )) s" >> $OUT/timeline.txt
echo quit | nvidia-cuda-mps-control
bash $REPO/scripts/device/collect.sh /tmp/final $OUT runs >> $OUT/timeline.txt 2>&1
for policy in ${POLICIES:-anira-e anira-o}; do tail -n 3 /tmp/final/brevo-$policy/metrics.jsonl > $OUT/tail-brevo-$policy.jsonl; done
left=$(( ${BUDGET:-565} - ($(date +%s) - T0) ))
echo "bench inference with $left s left" >> $OUT/timeline.txt
[ -z "${NO_BENCH:-}" ] && [ $left -gt 40 ] && timeout $(( left - 10 )) anira bench inference --device cuda --repeats 10 --decode-len 64 --json > $OUT/bench_inference_h200.json 2>&1
echo "done at $(( $(date +%s) - T0 )) s" >> $OUT/timeline.txt
