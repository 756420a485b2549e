#!/usr/bin/env bash
# Make the bundled DEPO checkpoints (checkpoints/depo/depo-fixed, checkpoints/depo/depo-anira-o;
# docs/deciders.md section 4, "DEPO") on one GPU machine, repo root, `.whl` carried
# (scripts/device/wheels.sh):
#   bash scripts/device/depo_checkpoints.sh            # about 13 minutes on one H200
# 1. The curriculum over the mapping's size and the hop count, one stage after another
#    (scripts/device/depo_network_curriculum.json: n 4 at k 1 -> n 24 at k 1 -> n 6 at
#    k 1-2 -> n 24 at k 1-2 -> n 6 at k 1-3 -> n 8 at k 1-4 -> n 24 at k 1-4, each stage
#    until in-distribution exact match reaches 0.97 or its cap), a fixed-depth network.
# 2. On that network, side by side: the fixed model trained on, and a fresh ANIRA-O and
#    ANIRA-E decider with the network (scripts/device/depo_checkpoint_runs.json), each
#    capped at 420 s (about 2,600-2,700 of the 3,000 steps on an H200 shared
#    three ways; the 2026-12-03 runs shared it five ways, with the `net0` runs).
# The latest checkpoints are exported under $OUT (or ./depo-checkpoints) by collect.sh.
set -euo pipefail
OUT=${OUT:-$PWD/depo-checkpoints}
mkdir -p "$OUT"
source "$(dirname "$0")/setup.sh"
export PYTHONUNBUFFERED=1 ANIRA_CACHE_DIR=/tmp/anira-cache
rm -rf /tmp/runs-s1 /tmp/depo-deciders
python3 scripts/run_jobs.py scripts/device/depo_network_curriculum.json --out /tmp/runs-s1 --parallel 1
python3 scripts/run_jobs.py scripts/device/depo_checkpoint_runs.json --out /tmp/depo-deciders --parallel 3 --cap 420
bash scripts/device/collect.sh /tmp/depo-deciders "$OUT" depo
