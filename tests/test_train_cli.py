"""``anira train`` through anira.cli.main: success, --json, resume, and one-line errors."""

from __future__ import annotations

import json
import os
import signal
import sys

import pytest

from anira import checkpoint as ckpt
from anira.cli import main

SMALL = ["--task", "mano", "--policy", "anira-o", "--preset", "smoke", "--set", "model.max_iters=2",
         "--set", "task.train=1,2", "--set", "task.test_id=1,2", "--set", "task.test_ood=3,3", "--quiet"]


def test_train_then_resume_with_json(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert main(["train", *SMALL, "--steps", "3", "--out", out, "--json"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["schema"] == 1 and first["status"] == "completed" and first["step"] == 3
    assert {r["split"] for r in first["last_eval"]} == {"test_id", "test_ood"}
    # resume without repeating the config: continue the recorded run to 5 steps
    assert main(["train", "--out", out, "--resume", "--steps", "5", "--quiet", "--json"]) == 0
    second = json.loads(capsys.readouterr().out)
    assert second["step"] == 5
    model, task = __import__("anira").load(out)
    assert task.name == "mano" and task.ranges.train == (1, 2) and model.cfg.max_iters == 2


def test_plain_output_and_progress_bar(tmp_path, capsys, monkeypatch):
    args = [a for a in SMALL if a != "--quiet"]
    assert main(["train", *args, "--steps", "2", "--out", str(tmp_path / "run")]) == 0
    captured = capsys.readouterr()
    assert "trained to step 2" in captured.out and "test_id" in captured.out
    assert captured.err == ""  # stderr is not a terminal: no progress bar
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert main(["train", *args, "--steps", "2", "--out", str(tmp_path / "run2")]) == 0
    assert "train" in capsys.readouterr().err  # on a terminal: the tqdm bar


@pytest.mark.parametrize("argv, message", [
    (["--preset", "nope"], "unknown preset 'nope'"),
    (["--set", "train.nope=1"], "unknown key 'train.nope'"),
    (["--set", "train.lr=fast"], "expected a number"),
    (["--steps", "x"], "expected an integer"),
    (["--task", "nope"], "unknown task 'nope'"),
    (["--policy", "nope"], "unknown policy 'nope'"),
])
def test_user_errors_are_one_line(tmp_path, capsys, argv, message):
    base = ["train", "--task", "mano", "--policy", "fixed", "--preset", "smoke", "--out", str(tmp_path / "r"), "--quiet"]
    assert main(base + argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("anira: error:") and message in err and "\n" not in err
    assert not (tmp_path / "r").exists()  # nothing created for a bad command


def test_existing_run_and_changed_config_are_refused(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert main(["train", *SMALL, "--steps", "2", "--out", out]) == 0
    latest = ckpt.latest_checkpoint(out)
    weights = (latest / "model.safetensors").read_bytes()
    capsys.readouterr()
    assert main(["train", *SMALL, "--steps", "2", "--out", out]) == 2
    assert "already holds a training run" in capsys.readouterr().err
    assert main(["train", *SMALL, "--set", "train.lr=0.5", "--out", out, "--resume"]) == 2
    assert "different config (train.lr" in capsys.readouterr().err
    assert ckpt.latest_checkpoint(out) == latest and (latest / "model.safetensors").read_bytes() == weights


def test_sigterm_saves_a_checkpoint(tmp_path, capsys, monkeypatch):
    """A SIGTERM during training stops at the next step with a checkpoint (exit 128+15)."""
    from anira.training import loop

    real = loop.Trainer._train_step
    calls = {"n": 0}

    def step_then_signal(self, batch, step, keep=True):
        calls["n"] += 1
        if calls["n"] == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(self, batch, step, keep)

    monkeypatch.setattr(loop.Trainer, "_train_step", step_then_signal)
    out = str(tmp_path / "run")
    code = main(["train", *SMALL, "--steps", "50", "--out", out])
    assert code == 128 + signal.SIGTERM
    assert "interrupted at step 2" in capsys.readouterr().out
    assert ckpt.latest_checkpoint(out).name == "step-00000002"


def test_list_presets(capsys):
    assert main(["train", "--list-presets", "--json"]) == 0
    names = {p["name"] for p in json.loads(capsys.readouterr().out)["presets"]}
    assert {"paper-mano", "paper-brevo", "paper-depo", "paper-lano", "tiny-mano", "tiny-brevo"} <= names


def test_help_mentions_every_option(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    for option in ("--task", "--policy", "--preset", "--set", "--out", "--resume", "--steps", "--device", "--json"):
        assert option in text


@pytest.mark.slow
def test_group_sigterm_with_data_workers_still_saves(tmp_path):
    """`timeout` and Ctrl-C signal the whole process group, data workers included;
    the run must still stop cleanly with a checkpoint at the step it reached."""
    import subprocess
    import sys
    import time

    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "anira.cli", "train", *SMALL, "--steps", "100000", "--out", str(out),
           "--set", "train.num_workers=1", "--set", "train.checkpoint_every=100000", "--set", "train.eval_every=100000"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.exists() and '"kind": "train"' in metrics.read_text()):
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGTERM)  # the whole group, as `timeout` does
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    step = int(stdout.split("interrupted at step ")[1].split()[0].rstrip(".;,"))
    assert step > 0
    assert ckpt.latest_checkpoint(out).name == f"step-{step:08d}"


def test_a_closed_pipe_ends_quietly():
    """`anira ... | head`: the reader goes away; no traceback, the SIGPIPE status."""
    import subprocess
    import sys

    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; from anira.cli import main; sys.exit(main(sys.argv[1:]))",
         "tasks", "sample", "brevo", "--n", "3000", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.read(10)
    proc.stdout.close()  # like `head -c 10`
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141
    assert "Traceback" not in err
