#!/usr/bin/env bash
# Export each run's latest checkpoint (weights, config, metrics; no optimizer state) with
# its command, and pack them into tarballs of <= 15 MB under DEST (the device tool
# returns at most 8 files of 16 MB). Usage: collect.sh RUNS_DIR DEST PREFIX [NAME_REGEX]
set -uo pipefail
RUNS=$1; DEST=$2; PREFIX=$3; ONLY=${4:-.}
rm -rf /tmp/export && mkdir -p /tmp/export
for run in "$RUNS"/*/; do
  name=$(basename "$run")
  [ -f "$run/latest" ] || continue
  echo "$name" | grep -Eq "$ONLY" || continue
  python3 -P -c "import anira.checkpoint as c, sys; c.export(sys.argv[1], sys.argv[2])" "$run" "/tmp/export/$name" \
    && cp "$RUNS/$name.cmd" "/tmp/export/$name/train_command.txt"
done
cp "$RUNS"/status.json /tmp/export/ 2>/dev/null
tar -C /tmp/export -cf - . | split -b 15m -d - "$DEST/$PREFIX.tar."
ls -la "$DEST"
