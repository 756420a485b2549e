#!/usr/bin/env python3
"""Run many `anira train` jobs side by side on one machine, each under a wall-clock cap.

    scripts/run_jobs.py JOBS.json --out DIR [--parallel N] [--cap SECONDS] [--anira CMD] [--resume]

JOBS.json is a list of {"name": ..., "args": [...], "fallback": [...], "cap": seconds} where
args are `anira train` arguments without --out (the job writes to DIR/<name>) and the
optional cap replaces --cap for that job (stages of a curriculum run one after another
with --parallel 1, each under its own cap); a job that
fails (not by its cap) is started once more from scratch with "fallback" appended
(e.g. ["--set", "train.compile=false"]), its first attempt kept as DIR/<name>.failed. At most N jobs run at
once; a job still running at its cap gets SIGTERM, on which `anira train` saves
a checkpoint and exits. While jobs run, DIR/status.json is rewritten every few
seconds (atomically) with each job's state and its latest train and eval records,
so a long session can be watched (or copied off a remote machine) mid-way.
With --resume every job continues its run directory instead (`anira train --resume
--out DIR/<name>`, no fallback): a run longer than one device call is one call that
starts it and, on the still-warm machine, calls that continue it. Each job's commands
are appended to DIR/<name>.cmd, so the run's train_command.txt lists them all.
This is the script that trained the bundled reference checkpoints and the policy
comparison runs on the H200 machine (see checkpoints/README.md).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path


def last_records(metrics: Path) -> dict:
    """The newest train record and the newest eval record of each split."""
    out: dict = {}
    if not metrics.is_file():
        return out
    for line in metrics.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a torn last line while the trainer writes
        key = "train" if rec.get("kind") == "train" else f"eval_{rec.get('split')}"
        out[key] = rec
    return out


def write_status(path: Path, jobs: list[dict]) -> None:
    rows = []
    for job in jobs:
        recs = last_records(job["out"] / "metrics.jsonl")
        train = recs.get("train", {})
        row = {k: job[k] for k in ("name", "state", "rc", "wall_s", "retried") if k in job}
        row["step"] = train.get("step")
        row["train"] = {k: train.get(k) for k in ("loss", "ce", "reg", "token_acc", "mean_depth", "tokens_per_s")}
        for split in ("test_id", "test_ood"):
            ev = recs.get(f"eval_{split}")
            if ev:
                row[split] = {"step": ev["step"], "acc": ev["acc"], "mean_depth": ev["mean_depth"],
                              "per_difficulty": [[d["difficulty"], d["acc"], d["mean_depth"]]
                                                 for d in ev["per_difficulty"]]}
        rows.append(row)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"time": time.time(), "jobs": rows}, indent=1))
    os.replace(tmp, path)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("jobs", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--parallel", type=int, default=6)
    ap.add_argument("--cap", type=float, default=600.0, help="seconds before a job gets SIGTERM")
    ap.add_argument("--anira", default="anira", help="the anira command (e.g. 'python3 -m anira.cli')")
    ap.add_argument("--resume", action="store_true", help="continue every job's run directory")
    ap.add_argument("--stop-file", type=Path, default=None,
                    help="once this file exists, running jobs get SIGTERM (they save) and no new job starts")
    args = ap.parse_args()
    specs = json.loads(args.jobs.read_text())
    args.out.mkdir(parents=True, exist_ok=True)
    jobs = [{"name": s["name"], "args": list(s["args"]), "fallback": list(s.get("fallback", [])),
             "cap": float(s.get("cap", args.cap)), "out": args.out / s["name"], "state": "waiting"}
            for s in specs]
    if args.resume:
        missing = [j["name"] for j in jobs if not (j["out"] / "latest").is_file()]
        if missing:
            print(f"--resume: no checkpoint to continue for {', '.join(missing)}", file=sys.stderr)
            return 2
        for job in jobs:
            job["args"], job["fallback"] = ["--resume"], []
    status = args.out / "status.json"
    running: list[dict] = []
    pending = list(jobs)
    while pending or running:
        if args.stop_file is not None and args.stop_file.exists():
            for job in pending:
                job["state"] = "not started"
            pending = []
            for job in running:
                if job["state"] == "running":
                    job["proc"].send_signal(signal.SIGTERM)
                    job["state"] = "stopping"
        while pending and len(running) < args.parallel:
            job = pending.pop(0)
            cmd = [*shlex.split(args.anira), "train", *job["args"], "--out", str(job["out"]), "--quiet", "--json"]
            with open(args.out / f"{job['name']}.cmd", "a") as f:
                f.write(shlex.join(cmd) + "\n")
            job["log"] = open(args.out / f"{job['name']}.log", "a")
            job["proc"] = subprocess.Popen(cmd, stdout=job["log"], stderr=subprocess.STDOUT)
            job.setdefault("start", time.time())  # a retry keeps the first start: one cap per job
            job["state"] = "running"
            running.append(job)
        time.sleep(2.0)
        for job in list(running):
            elapsed = time.time() - job["start"]
            rc = job["proc"].poll()
            if rc is None and elapsed > job["cap"] and job["state"] == "running":
                job["proc"].send_signal(signal.SIGTERM)  # the trainer saves, then exits 143
                job["state"] = "stopping"
            if rc is not None:
                job["rc"], job["wall_s"] = rc, round(elapsed, 1)
                job["state"] = "done" if rc == 0 else ("capped" if job["state"] == "stopping" else "failed")
                job["log"].close()
                running.remove(job)
                stopped = args.stop_file is not None and args.stop_file.exists()
                if job["state"] == "failed" and job["fallback"] and elapsed < job["cap"] and not stopped:
                    failed_dir = job["out"].with_name(job["name"] + ".failed")
                    if job["out"].exists():
                        job["out"].rename(failed_dir)
                    job["args"] += job["fallback"]
                    job["fallback"], job["state"], job["retried"] = [], "waiting", True
                    pending.insert(0, job)
        write_status(status, jobs)
    write_status(status, jobs)
    failed = [j["name"] for j in jobs if j["state"] == "failed"]
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
