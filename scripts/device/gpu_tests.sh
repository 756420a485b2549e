#!/usr/bin/env bash
# The gpu-marked tests (CUDA graphs of the fast and dense iterations) on the device.
set -uo pipefail
source "$(dirname "$0")/setup.sh"
python3 -P -m pytest -q -p no:warnings -m gpu tests/test_loop_graphs.py tests/test_fast_path.py
