#!/usr/bin/env bash
# Export each run's latest checkpoint (weights, config, metrics; no optimizer state) with
# its command, and pack them into tarballs of <= 15 MB under DEST (the device tool
# returns at most 8 files of 16 MB). Usage: collect.sh RUNS_DIR DEST PREFIX [NAME_REGEX]
# One Python process exports every run: importing anira (and transformer-lens) takes
# ~13 s on the H200 machine, so a process per run cost minutes in the 2026-12-01 session.
set -uo pipefail
RUNS=$1; DEST=$2; PREFIX=$3; ONLY=${4:-.}
rm -rf /tmp/export && mkdir -p /tmp/export
python3 -P - "$RUNS" "$ONLY" <<'PY'
import re, shutil, sys
from pathlib import Path
import anira.checkpoint as c
runs, only = Path(sys.argv[1]), re.compile(sys.argv[2])
for run in sorted(p for p in runs.iterdir() if p.is_dir() and only.search(p.name)):
    if c.latest_checkpoint(run) is None:
        continue
    c.export(run, Path("/tmp/export") / run.name)
    cmd = runs / f"{run.name}.cmd"
    if cmd.is_file():
        shutil.copyfile(cmd, Path("/tmp/export") / run.name / "train_command.txt")
PY
cp "$RUNS"/status.json /tmp/export/ 2>/dev/null
tar -C /tmp/export -cf - . | split -b 15m -d - "$DEST/$PREFIX.tar."
ls -la "$DEST"
