#!/usr/bin/env bash
# 2026-12-02 (second session): training on the GPU after the fused projections and the
# fused RMSNorm (they serve training too): the MANO paper-size training benchmark in
# CUDA-graph mode (issue 4's number was 912,500 tokens/s), and a short ref-mano
# training run (bf16 autocast, compiled CUDA-graph steps) that must still learn.
set -uo pipefail
T0=$(date +%s)
export PYTHONUNBUFFERED=1 TORCHINDUCTOR_COMPILE_THREADS=16
source "$(dirname "$0")/setup.sh"
cd /tmp
timeout 200 anira bench train --config mano --policy anira-o --modes reduce-overhead --steps 20 --warmup 3 --json > $OUT/bench_train_mano.json 2> $OUT/bench_train.err
echo "bench rc=$? at $(( $(date +%s) - T0 )) s" >> $OUT/timeline.txt
timeout 150 anira train --preset ref-mano --policy anira-o --device cuda --steps 600 --out /tmp/run_mano --json --quiet > $OUT/train_ref_mano.json 2> $OUT/train.err
echo "train rc=$? at $(( $(date +%s) - T0 )) s" >> $OUT/timeline.txt
