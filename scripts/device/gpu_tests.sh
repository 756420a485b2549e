#!/usr/bin/env bash
# Every gpu-marked test (CUDA graphs, compiled training, the static decoder, aligned layouts) on the device.
set -uo pipefail
source "$(dirname "$0")/setup.sh"
python3 -P -m pytest -q -p no:warnings -m gpu tests/test_loop_graphs.py tests/test_fast_path.py tests/test_gpu_training.py tests/test_static_decode.py tests/test_aligned.py
