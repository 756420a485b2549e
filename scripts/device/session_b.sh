#!/usr/bin/env bash
# Device session, call B: let the jobs started by session_a.sh run until B_STOP seconds
# into this call, stop them (each saves a checkpoint), then export and pack every run.
set -uo pipefail
T0=$(date +%s)
export PYTHONPATH=/tmp/anira:/tmp/site PATH=/tmp/anira/bin:$PATH
while [ $(( $(date +%s) - T0 )) -lt ${B_STOP:-430} ] && pgrep -f run_jobs.py > /dev/null; do sleep 5; done
touch /tmp/final/STOP
while pgrep -f run_jobs.py > /dev/null && [ $(( $(date +%s) - T0 )) -lt $(( ${B_STOP:-430} + 90 )) ]; do sleep 2; done
mkdir -p /tmp/res_b && cp /tmp/final/status.json /tmp/final/*.log /tmp/final/*.cmd /tmp/final.log /tmp/res_b/ 2>/dev/null
for m in /tmp/final/*/metrics.jsonl; do cp "$m" "/tmp/res_b/$(basename "$(dirname "$m")").metrics.jsonl"; done
tar -C /tmp/res_b -czf $OUT/results_b.tgz .
bash /tmp/job/collect.sh /tmp/final $OUT runs
echo "call B ends at $(( $(date +%s) - T0 )) s"
