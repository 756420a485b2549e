#!/usr/bin/env bash
# One device call, 2026-12-02: issue 4's training benchmark, compile modes side by side in one
# process per config (the 2026-12-01 numbers compared only eager and reduce-overhead; the kernel
# profile of this day, scripts/profile_train.py, timed the `default` mode at 31.9 ms per MANO step).
# Usage (device machine, repo root): bash scripts/device/bench_train_modes.sh   (carry .whl)
set -uo pipefail
T0=$(date +%s)
export PYTHONUNBUFFERED=1 TORCHINDUCTOR_COMPILE_THREADS=16
source "$(dirname "$0")/setup.sh"
cd /tmp
timeout 270 anira bench train --config mano --policy anira-o --modes default,reduce-overhead --steps 20 --warmup 3 --json > $OUT/bench_train_mano_modes.json 2> $OUT/mano.err
echo "mano rc=$? at $(( $(date +%s) - T0 )) s" >> $OUT/timeline.txt
left=$(( 540 - ($(date +%s) - T0) ))
[ $left -gt 90 ] && timeout $left anira bench train --config brevo --policy anira-o --modes default,reduce-overhead --steps 20 --warmup 3 --json > $OUT/bench_train_brevo_modes.json 2> $OUT/brevo.err
echo "done at $(( $(date +%s) - T0 )) s" >> $OUT/timeline.txt
