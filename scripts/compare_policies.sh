#!/usr/bin/env bash
# Issue 8's comparison: every registered policy trained with its task's tiny preset
# (tiny-mano, tiny-brevo: D 6, d_model 64, 1,500 steps, batch 64), then `anira eval`
# (256 instances per difficulty) and `anira probe` (every suite, 2,000 instances);
# the training-free exits are applied to each task's `fixed` run. One task per
# invocation of `anira bench compare`. Under a per-command time limit, split further
# with POLICIES=a,b (exits need `fixed` in the same OUT) and re-run: a run dir with a
# checkpoint is resumed (checkpoint every 500 steps), so finished runs are not retrained.
#
# Expected runtime on one H200: NOT MEASURED yet. Estimate: the tiny models are
# launch-bound (~1-2 min per 1,500-step run, 8 trained policies per task) plus
# ~1-2 min of eval and probes per policy: roughly 15-30 min per task. On a shared
# 2-core CPU tiny-brevo trains at ~1 step/s (act, measured), i.e. ~25 min per policy
# at 1,500 steps: use the GPU.
#
# Output: OUT/<task>/{compare.json,compare.md} and OUT/<task>/<policy>/{run files, eval.json, probe.json}.
# Usage: scripts/compare_policies.sh [OUT]   (env: TASKS="mano brevo" POLICIES=all DEVICE=cuda SEED=0 SUITES=all)
set -euo pipefail
OUT=${1:-runs/compare}
TASKS=${TASKS:-"mano brevo"}
DEVICE=${DEVICE:-cuda}
SEED=${SEED:-0}
SUITES=${SUITES:-all}
POLICIES=${POLICIES:-all}
mkdir -p "$OUT"
for task in $TASKS; do
  anira bench compare --tasks "$task" --policies "$POLICIES" --device "$DEVICE" --seed "$SEED" \
    --suite "$SUITES" --eval-n 256 --probe-n 2000 --out "$OUT/$task" --json > "$OUT-$task.json"
  cat "$OUT/$task/compare.md"
done
