#!/usr/bin/env bash
# First device call of a session: environment, training-step speed by execution mode at the
# reference size, a profile of the inference fast path, then a short recipe sweep.
# Usage (device machine, repo root): bash scripts/device/probe.sh   (writes under $OUT)
set -uo pipefail
export PYTHONUNBUFFERED=1 ANIRA_CACHE_DIR=/tmp/anira-cache
source "$(dirname "$0")/setup.sh"
REPO=$(pwd); cd /tmp
{ nvidia-smi -L; nproc; which nvidia-cuda-mps-control; python3 -c "import torch; print(torch.__version__)"; } > $OUT/env.txt 2>&1
python3 - > $OUT/data_rates.txt 2>&1 <<'PY'
import time
from anira.registry import default_registry
from anira.training.config import build_task
from anira.training.data import train_batch, to_torch
reg = default_registry()
for name, r in (("mano", (1, 3)), ("brevo", (3, 6))):
    task = build_task(reg.task(name), {"train": r, "test_id": r, "test_ood": (r[1] + 1, r[1] + 1)})
    t = time.perf_counter()
    for s in range(4):
        to_torch(train_batch(task, 0, s, range(512)))
    print(name, r, f"{2048 / (time.perf_counter() - t):.0f} examples/s on one core")
PY
timeout 200 anira bench train --config tiny-mano --policy anira-o --set model.preset=small --set model.max_iters=8 \
  --set task.train=1,3 --set task.test_id=1,3 --set task.test_ood=4,5 --batch 512 \
  --modes eager,default,reduce-overhead --steps 30 --warmup 3 --json > $OUT/bench_tiny.json 2> $OUT/bench_tiny.err
timeout 90 python3 $REPO/scripts/profile_inference.py cuda 64 > $OUT/profile_b64.txt 2>&1
timeout 60 python3 $REPO/scripts/profile_inference.py cuda 1 > $OUT/profile_b1.txt 2>&1
timeout 230 python3 $REPO/scripts/run_jobs.py $REPO/scripts/device/sweep1.json --out /tmp/sweep --parallel 12 --cap ${SWEEP_CAP:-170} > $OUT/sweep.log 2>&1
cp /tmp/sweep/status.json $OUT/sweep_status.json
tail -3 /tmp/sweep/*.log > $OUT/sweep_tails.txt 2>&1
ls $OUT
