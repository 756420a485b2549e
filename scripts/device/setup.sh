# Sourced by the device scripts (repo root, `.whl` carried: scripts/device/wheels.sh builds it): installs the carried wheels
# and anira itself under /tmp and puts them on the paths; a failed install ends the caller.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --target /tmp/anira . || exit 1
export PYTHONPATH=/tmp/anira:/tmp/site PATH=/tmp/anira/bin:$PATH
