#!/usr/bin/env bash
# One device call: the training runs of a jobs file (scripts/device/*.json) side by
# side on the GPU under CUDA MPS, each stopped (with a checkpoint) at CAP seconds, while the
# gpu-marked tests run beside them; then the runs' latest checkpoints and metrics are packed
# under $OUT (scripts/device/collect.sh). Usage (device, repo root, .whl carried):
#   JOBS=scripts/device/reference_checkpoints.json CAP=540 bash scripts/device/train_jobs.sh
# JOBS may list several files, comma-separated: their runs go side by side as one set.
# RESUME=1 continues the runs of JOBS left in /tmp/runs by the previous call (a warm machine
# keeps its disk for a few seconds after a call); without it /tmp/runs starts empty.
# STATE=REGEX also packs the matching runs whole, optimizer state included
# (scripts/device/collect_state.sh), so they can be continued on a fresh machine.
set -uo pipefail
T0=$(date +%s)
export PYTHONUNBUFFERED=1 ANIRA_CACHE_DIR=/tmp/anira-cache TORCHINDUCTOR_COMPILE_THREADS=2
python3 - "$JOBS" /tmp/jobs.json <<'PY' || exit 1
import json, sys
jobs = [job for path in sys.argv[1].split(",") for job in json.load(open(path))]
names = [job["name"] for job in jobs]
if len(set(names)) != len(names):
    sys.exit(f"train_jobs.sh: a run name repeats across {sys.argv[1]}")
json.dump(jobs, open(sys.argv[2], "w"), indent=1)
PY
JOBS=/tmp/jobs.json
source "$(dirname "$0")/setup.sh"
REPO=$(pwd)
nvidia-cuda-mps-control -d && echo "MPS on" > $OUT/timeline.txt
n=$(python3 -c "import json,sys; print(len(json.load(open(sys.argv[1]))))" "$JOBS")
if [ -n "${RESUME:-}" ]; then resume=--resume; else resume=; rm -rf /tmp/runs /tmp/runs.log; fi
python3 "$REPO/scripts/run_jobs.py" "$JOBS" --out /tmp/runs --parallel "$n" --cap "${CAP:-420}" $resume >> /tmp/runs.log 2>&1 &
jobs_pid=$!
if [ -z "${NO_TESTS:-}" ]; then
  (cd "$REPO" && timeout $(( ${CAP:-420} + 60 )) python3 -P -m pytest -q -p no:warnings -m gpu \
     tests/test_loop_graphs.py tests/test_fast_path.py tests/test_gpu_training.py tests/test_static_decode.py tests/test_aligned.py) > $OUT/gpu_tests.txt 2>&1
  echo "gpu tests done at $(( $(date +%s) - T0 )) s" >> $OUT/timeline.txt
fi
wait $jobs_pid
echo "runs done at $(( $(date +%s) - T0 )) s" >> $OUT/timeline.txt
echo quit | nvidia-cuda-mps-control
cp /tmp/runs.log $OUT/runs.log
bash "$REPO/scripts/device/collect.sh" /tmp/runs $OUT runs >> $OUT/timeline.txt 2>&1
if [ -n "${STATE:-}" ]; then
  bash "$REPO/scripts/device/collect_state.sh" /tmp/runs $OUT state "$STATE" >> $OUT/timeline.txt 2>&1
fi
echo "done at $(( $(date +%s) - T0 )) s" >> $OUT/timeline.txt
