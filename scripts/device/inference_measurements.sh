#!/usr/bin/env bash
# One device call (H200 alone, under 10 minutes): the static decoder's gpu tests, then its
# benchmark in both dtypes, a kernel profile of the batch-64 inference core in bf16, and the
# decode step's profile in both dtypes. Each result is written under $OUT as it comes (a call
# cut short by the budget still returns what finished). Covers skip_halted="device"
# (conditional graph nodes, where this torch build records them) and compile=True.
# Usage (device, repo root, .whl carried): bash scripts/device/inference_measurements.sh
set -uo pipefail
source "$(dirname "$0")/setup.sh"
python3 -c "import torch, anira.static_decode as sd; print(torch.__version__, torch.version.cuda, 'conditional nodes:', sd.conditional_nodes_available())" > $OUT/torch.txt 2>&1
timeout 200 python3 -P -m pytest -q -p no:warnings -m gpu tests/test_static_decode.py -rA > $OUT/gpu_static_decode.txt 2>&1
for d in float32 bfloat16; do
  timeout 150 python3 -P -m anira.cli bench inference --device cuda --batches 1 --iters 6 --repeats 10 --decode-len 64 \
    --dtype $d --json > $OUT/bench_decode_$d.json 2> $OUT/bench_decode_$d.err
done
timeout 120 python3 -P scripts/profile_inference.py cuda 64 bfloat16 > $OUT/profile_inference_b64_bf16.txt 2>&1
for d in float32 bfloat16; do
  timeout 200 python3 -P scripts/profile_decode.py $d compile > $OUT/profile_decode_$d.txt 2>&1
done
