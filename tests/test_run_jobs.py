"""scripts/run_jobs.py: jobs side by side under a cap, a fallback retry, the live status file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "run_jobs.py"
SMOKE = ["--preset", "smoke", "--policy", "fixed", "--device", "cpu", "--set", "model.max_iters=2",
         "--set", "task.train=1,2", "--set", "task.test_id=1,2", "--set", "task.test_ood=3,3",
         "--set", "train.eval_examples=2"]


@pytest.mark.slow
def test_jobs_run_and_a_failing_job_is_retried_with_its_fallback(tmp_path):
    jobs = [
        {"name": "ok", "args": [*SMOKE, "--steps", "3"]},
        # lr=-1 is refused at once; the fallback's later --set wins
        {"name": "retry", "args": [*SMOKE, "--steps", "3", "--set", "train.lr=-1"],
         "fallback": ["--set", "train.lr=0.001"]},
    ]
    spec = tmp_path / "jobs.json"
    spec.write_text(json.dumps(jobs))
    out = tmp_path / "runs"
    done = subprocess.run([sys.executable, str(SCRIPT), str(spec), "--out", str(out), "--parallel", "2",
                           "--cap", "300", "--anira", f"{sys.executable} -m anira.cli"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    status = {j["name"]: j for j in json.loads((out / "status.json").read_text())["jobs"]}
    assert status["ok"]["state"] == "done" and status["ok"]["step"] == 3
    assert status["retry"]["state"] == "done" and status["retry"]["retried"] and status["retry"]["step"] == 3
    assert (out / "retry" / "latest").is_file() and not (out / "retry.failed" / "latest").exists()
    assert "train.lr=0.001" in (out / "retry.cmd").read_text()


@pytest.mark.slow
def test_a_jobs_own_cap_replaces_the_default(tmp_path):
    # the long job's own 1-second cap stops it; the short job runs under the default cap
    jobs = [{"name": "long", "args": [*SMOKE, "--steps", "100000"], "cap": 1},
            {"name": "short", "args": [*SMOKE, "--steps", "2"]}]
    spec = tmp_path / "jobs.json"
    spec.write_text(json.dumps(jobs))
    out = tmp_path / "runs"
    subprocess.run([sys.executable, str(SCRIPT), str(spec), "--out", str(out), "--parallel", "1",
                    "--cap", "300", "--anira", f"{sys.executable} -m anira.cli"],
                   capture_output=True, text=True, timeout=600)
    status = {j["name"]: j for j in json.loads((out / "status.json").read_text())["jobs"]}
    assert status["long"]["state"] == "capped" and status["long"]["wall_s"] < 60
    assert status["short"]["state"] == "done" and status["short"]["step"] == 2
