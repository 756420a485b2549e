#!/usr/bin/env bash
# Pack the run directories whose names match NAME_REGEX whole (run.json, metrics, the
# latest checkpoint with its optimizer state; older checkpoints left out), so a run can be
# continued on a fresh machine with `anira train --out DIR --resume` after unpacking into
# DIR's parent. Tarballs of <= 15 MB under DEST. Usage: collect_state.sh RUNS_DIR DEST PREFIX REGEX
set -uo pipefail
RUNS=$1; DEST=$2; PREFIX=$3; ONLY=$4
LIST=$(python3 -P - "$RUNS" "$ONLY" <<'PY'
import re, sys
from pathlib import Path
runs, only = Path(sys.argv[1]), re.compile(sys.argv[2])
for run in sorted(p for p in runs.iterdir() if p.is_dir() and only.search(p.name)):
    latest = run / "latest"
    if not latest.is_file():
        continue
    keep = latest.read_text().strip()
    for f in sorted(run.rglob("*")):
        rel = f.relative_to(runs)
        if f.is_file() and not (f.relative_to(run).parts[0] == "checkpoints"
                                and str(f.relative_to(run).parent) != keep):
            print(rel)
    cmd = runs / f"{run.name}.cmd"
    if cmd.is_file():
        print(cmd.relative_to(runs))
PY
)
[ -n "$LIST" ] || { echo "collect_state: nothing matches $ONLY"; exit 0; }
echo "$LIST" | tar -C "$RUNS" -cf - -T - | split -b 15m -d - "$DEST/$PREFIX.tar."
ls -la "$DEST"
