"""The training run directory: creating it, refusing to clobber another run,
and checking that ``--resume`` continues the same run."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from anira.checkpoint import FORMAT, FORMAT_VERSION, RUN_FILE, latest_checkpoint, write_text_atomic
from anira.errors import AniraError
from anira.training.config import RESUMABLE_FIELDS, RunSpec


def read_run_spec(out: Path) -> RunSpec:
    path = Path(out) / RUN_FILE
    if not path.is_file():
        raise AniraError(f"{out}: nothing to resume ({RUN_FILE} is missing)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise AniraError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or "run" not in data:
        raise AniraError(f"{path}: not an anira run file (field 'format' or 'run' missing)")
    if data.get("format_version", 0) > FORMAT_VERSION:
        raise AniraError(f"{path}: field 'format_version' {data.get('format_version')} is newer than this anira reads")
    try:
        return RunSpec.from_dict(data["run"])
    except (AniraError, TypeError) as exc:
        raise AniraError(f"{path}: field 'run': {exc}") from None


def spec_differences(old: RunSpec, new: RunSpec) -> list[str]:
    """Fields that differ in ways that change the trained function."""
    a, b = old.to_dict(), new.to_dict()
    diffs = []
    for key in ("task", "policy", "task_options", "model_preset", "model", "policy_options"):
        if a[key] != b[key]:
            diffs.append(f"{key}: {a[key]!r} in the run, {b[key]!r} now")
    for key, value in a["train"].items():
        if key not in RESUMABLE_FIELDS and b["train"].get(key) != value:
            diffs.append(f"train.{key}: {value!r} in the run, {b['train'].get(key)!r} now")
    return diffs


def write_run_file(out: Path, spec: RunSpec) -> None:
    payload: dict[str, Any] = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "run": spec.to_dict(), "updated": time.time(),
    }
    write_text_atomic(Path(out) / RUN_FILE, json.dumps(payload, indent=2, sort_keys=True) + "\n")


def check_run_dir(out: Path, spec: RunSpec, resume: bool) -> Path | None:
    """Validate ``out`` for a new run or a resume, writing nothing.

    Returns the checkpoint to resume from (None: start at step 0).
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise AniraError(f"--out {out}: exists and is not a directory")
    if not resume:
        if (out / RUN_FILE).exists():
            raise AniraError(f"--out {out}: already holds a training run; pass --resume to continue it or choose another directory")
        if out.exists() and any(out.iterdir()):
            raise AniraError(f"--out {out}: directory is not empty and holds no anira run; choose another directory")
        return None
    stored = read_run_spec(out)
    diffs = spec_differences(stored, spec)
    if diffs:
        raise AniraError(f"--resume with a different config ({diffs[0]}); start a new run in another directory")
    return latest_checkpoint(out)
