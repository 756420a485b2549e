"""Options every command shares: --threads, progress bars, and `anira bench hooks`'s
account of what it compares."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import pytest
import torch

from anira.cli import build_parser, main
from anira.commands.common import DEFAULT_THREADS, configure_threads, progress_bar


@pytest.fixture
def restore_threads(monkeypatch):
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_threads_before_or_after_the_command(restore_threads):
    parser = build_parser()
    assert parser.parse_args(["--threads", "3", "tasks", "list"]).threads == 3
    assert parser.parse_args(["tasks", "list", "--threads", "3"]).threads == 3
    assert parser.parse_args(["bench", "inference", "--threads", "2"]).threads == 2
    assert parser.parse_args(["tasks", "list"]).threads is None  # the default is decided at run time
    assert "--threads" in parser.format_help() and "--threads" in parser._subparsers._group_actions[0].choices[
        "eval"].format_help()


def test_configure_threads_sets_torch_and_the_environment(restore_threads, monkeypatch):
    assert configure_threads(None) == DEFAULT_THREADS == 1
    assert torch.get_num_threads() == 1 and os.environ["OMP_NUM_THREADS"] == "1"
    assert configure_threads(2) == 2 and torch.get_num_threads() == 2
    assert os.environ["MKL_NUM_THREADS"] == os.environ["OPENBLAS_NUM_THREADS"] == "2"
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert configure_threads(None) == 3  # the user's environment is the default
    torch.set_num_threads(1)
    assert configure_threads(0) is None and torch.get_num_threads() == 1  # 0: left alone


def test_threads_reach_torch_in_a_fresh_process():
    """Set before torch is imported (through the environment), as `anira` does."""
    script = ("from anira.cli import main; import sys; import anira.commands.tasks as t\n"
              "t.cmd_list = lambda args: print(__import__('torch').get_num_threads())\n"
              "sys.exit(main(sys.argv[1:]))\n")
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    for argv, expected in ((["tasks", "list"], "1"), (["--threads", "2", "tasks", "list"], "2")):
        out = subprocess.run([sys.executable, "-c", script, *argv], capture_output=True, text=True, env=env,
                             timeout=120)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == expected


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bars_count_instances_and_only_on_a_terminal(monkeypatch):
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    update, close = progress_bar("eval x", unit="instance")
    update(3, 10)
    close()
    assert sys.stderr.getvalue() == ""  # not a terminal: no bar
    monkeypatch.setattr(sys, "stderr", _Terminal())
    update, close = progress_bar("eval x", unit="instance")
    update(3, 10)
    update(10, 10)
    close()
    drawn = sys.stderr.getvalue()
    assert "eval x" in drawn and "/10" in drawn and "instance/s" in drawn and "batch" not in drawn


def test_bench_hooks_says_what_it_compares(capsys, monkeypatch):
    argv = ["bench", "hooks", "--d-model", "64", "--batch", "2", "--seq", "8", "--iters", "2", "--repeats", "3"]
    monkeypatch.setattr(sys, "stderr", _Terminal())
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "compared: one forward pass with all" in out and "3 pairs run back to back" in out
    assert "median ratio:" in out and "the median over the 3 pairs of (with hook points / bypassed)" in out
    assert "ratio of the medians" in out
    assert "bench hooks" in sys.stderr.getvalue() and "/6" in sys.stderr.getvalue()  # 3 warm-up + 3 timed pairs
    assert main([*argv, "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["ratio_of_medians"] == pytest.approx(r["median_s_with_hooks"] / r["median_s_bypassed"])
    help_text = build_parser()._subparsers._group_actions[0].choices["bench"]._subparsers._group_actions[0] \
        .choices["hooks"].format_help()
    for option in ("--d-model", "--batch", "--seq", "--iters", "--repeats", "--device"):
        line = next(line for line in help_text.splitlines() if line.strip().startswith(option))
        assert "default" in line or "(default" in help_text.split(option, 1)[1][:200], option
