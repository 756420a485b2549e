#!/usr/bin/env bash
# Device session, call A (<= 570 s): issue 4's training benchmark at the paper's MANO and
# BREVO sizes (eager vs CUDA graphs), then start the 16 training jobs (6 reference
# checkpoints + 10 policy-comparison runs) in the background; they outlive this call
# (setsid) and call B (session_b.sh) stops and collects them. Writes under $OUT.
set -uo pipefail
T0=$(date +%s)
export PYTHONUNBUFFERED=1 ANIRA_CACHE_DIR=/tmp/anira-cache
source "$(dirname "$0")/setup.sh"
mkdir -p /tmp/job && cp scripts/run_jobs.py scripts/device/final_jobs.json scripts/device/collect.sh /tmp/job/
cd /tmp
{ nvidia-smi; nproc; python3 -c "import torch; print(torch.__version__)"; } > $OUT/env.txt 2>&1
timeout 200 anira bench train --config mano --policy anira-o --modes eager,reduce-overhead --steps 20 --warmup 3 \
  --json > $OUT/bench_train_mano.json 2> $OUT/bench_train_mano.err
timeout 160 anira bench train --config brevo --policy anira-o --modes eager,reduce-overhead --steps 20 --warmup 3 \
  --json > $OUT/bench_train_brevo.json 2> $OUT/bench_train_brevo.err
echo "benches done at $(( $(date +%s) - T0 )) s" > $OUT/timeline.txt
# MPS lets the 16 small jobs' kernels run concurrently; keep it only if CUDA still works under it
if nvidia-cuda-mps-control -d 2>> $OUT/timeline.txt; then
  sleep 1
  if ! timeout 60 python3 -c "import torch; assert torch.ones(2, device='cuda').sum().item() == 2" >> $OUT/timeline.txt 2>&1; then
    echo quit | nvidia-cuda-mps-control; echo "MPS off (CUDA failed under it)" >> $OUT/timeline.txt
  else
    echo "MPS on" >> $OUT/timeline.txt
  fi
fi
export TORCHINDUCTOR_COMPILE_THREADS=1  # 16 jobs compile at once on 16 cores
setsid nohup python3 /tmp/job/run_jobs.py /tmp/job/final_jobs.json --out /tmp/final --parallel 16 --cap 1500 \
  --stop-file /tmp/final/STOP > /tmp/final.log 2>&1 < /dev/null &
echo "jobs started at $(( $(date +%s) - T0 )) s" >> $OUT/timeline.txt
while [ $(( $(date +%s) - T0 )) -lt ${A_END:-520} ]; do sleep 5; done
# insurance: the reference runs' checkpoints so far, in case call B never comes
bash /tmp/job/collect.sh /tmp/final $OUT insurance '^(mano|brevo)-(fixed|anira-e|anira-o)$' > /tmp/collect_a.log 2>&1
echo "call A ends at $(( $(date +%s) - T0 )) s" >> $OUT/timeline.txt
mkdir -p /tmp/res_a && mv $OUT/*.json $OUT/*.err $OUT/env.txt $OUT/timeline.txt /tmp/res_a/ 2>/dev/null
cp /tmp/final/status.json /tmp/res_a/status_a.json 2>/dev/null; cp /tmp/final.log /tmp/res_a/ 2>/dev/null
tar -C /tmp/res_a -czf $OUT/results_a.tgz .
