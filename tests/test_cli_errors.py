"""Every subcommand with bad input: exactly one line on stderr, exit status 2,
nothing left on disk. Run in-process through anira.cli.main (fast); a few cases
through a real process for the paths that import no torch."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from anira.cli import _leaf_parsers, build_parser, main

ROOT = Path(__file__).resolve().parents[1]
CK = str(ROOT / "checkpoints" / "mano-fixed")
NO_CUDA = not torch.cuda.is_available()
BAD_DIR = "/dev/null/out"  # below a file: can never be created

# (argv, a fragment the one-line message must contain). "{tmp}" is a fresh directory.
CASES = [
    (["--threads", "x", "tasks", "list"], "--threads: invalid int value"),
    (["--threads", "-1", "tasks", "list"], "--threads must be >= 0"),
    (["nope"], "invalid choice: 'nope'"),
    # run
    (["run", "--n", "0"], "--n and --probe-n must be >= 1"),
    (["run", "--n", "many"], "argument --n: invalid int value"),
    (["run", "{tmp}/missing"], "no such checkpoint"),
    (["run", CK, "--suites", "nope"], "unknown probe suite 'nope'"),
    (["run", CK, "--out", BAD_DIR], "--out /dev/null/out: cannot be created"),
    (["run", "--trace", "--task", "nope"], "unknown task 'nope'"),
    (["run", "--trace", "--difficulty", "99"], "outside the supported range"),
    # plugins
    (["plugins"], "`anira plugins` needs a subcommand: list"),
    (["plugins", "list", "--bogus"], "unrecognized arguments: --bogus"),
    # tasks
    (["tasks"], "`anira tasks` needs a subcommand: list, sample"),
    (["tasks", "list", "--bogus"], "unrecognized arguments: --bogus"),
    (["tasks", "sample"], "the following arguments are required: task"),
    (["tasks", "sample", "nope"], "unknown task 'nope'"),
    (["tasks", "sample", "mano", "--split", "val"], "argument --split: invalid choice: 'val'"),
    (["tasks", "sample", "mano", "-k", "99"], "outside the supported range"),
    (["tasks", "sample", "mano", "--n", "0"], "--n must be at least 1"),
    (["tasks", "sample", "mano", "--seed", "-1"], "--seed must be non-negative"),
    # train
    (["train", "--task", "mano", "--policy", "nope", "--out", "{tmp}/r"], "unknown policy 'nope'"),
    (["train", "--task", "mano", "--policy", "fixed"], "--out DIR is required"),
    (["train", "--task", "mano", "--policy", "fixed", "--preset", "smoke", "--out", BAD_DIR], "cannot be created"),
    (["train", "--out", "{tmp}/r", "--resume"], "nothing to resume"),
    (["train", "--task", "mano", "--policy", "fixed", "--out", "{tmp}/r", "--set", "x"], "--set expects key=value"),
    # eval
    (["eval"], "the following arguments are required: CKPT"),
    (["eval", "{tmp}/missing"], "no such checkpoint"),
    (["eval", CK, "--device", "gpu"], "unknown device 'gpu'"),
    (["eval", CK, "--n", "0"], "--n must be >= 1"),
    (["eval", CK, "--out", BAD_DIR], "cannot be created"),
    # report
    (["report", CK], "the following arguments are required: --out"),
    (["report", CK, "--out", BAD_DIR], "cannot be created"),
    (["report", "{tmp}/missing", "--out", "{tmp}/rep"], "no such checkpoint"),
    (["report", CK, "--out", "{tmp}/rep", "--device", "gpu"], "unknown device 'gpu'"),
    # probe
    (["probe", CK, "--device", "gpu"], "unknown device 'gpu'"),
    (["probe", CK, "--suite", "nope"], "unknown probe suite 'nope'"),
    (["probe", CK, "--option", "x"], "SUITE.KEY=VALUE"),
    (["probe", CK, "--out", BAD_DIR], "cannot be created"),
    (["probe", "{tmp}/missing"], "no such checkpoint"),
    # bench
    (["bench"], "`anira bench` needs a subcommand: hooks, tasks, train, inference, compare"),
    (["bench", "hooks", "--repeats", "0"], "must be >= 1"),
    (["bench", "hooks", "--device", "gpu"], "unknown device 'gpu'"),
    (["bench", "hooks", "--d-model", "wide"], "argument --d-model: invalid int value"),
    (["bench", "tasks", "--repeats", "0"], "--repeats and --workers must be >= 1"),
    (["bench", "train", "--device", "gpu"], "unknown device 'gpu'"),
    (["bench", "train", "--device", "cpu", "--config", "nope"], "unknown benchmark config 'nope'"),
    (["bench", "train", "--device", "cpu", "--gemms", "fast"], "unknown GEMM layout(s) fast"),
    (["bench", "inference", "--batches", "x"], "--batches must be comma-separated integers"),
    (["bench", "inference", "--device", "gpu"], "unknown device 'gpu'"),
    (["bench", "compare", "--policies", "nope"], "unknown policy 'nope'"),
    (["bench", "compare", "--device", "gpu"], "unknown device 'gpu'"),
    (["bench", "compare", "--out", BAD_DIR], "cannot be created"),
]

# CUDA requested on a machine without it (`anira train` already got this right)
CUDA_CASES = [
    ["eval", CK, "--device", "cuda"],
    ["probe", CK, "--device", "cuda"],
    ["report", CK, "--out", "{tmp}/rep", "--device", "cuda:0"],
    ["bench", "hooks", "--device", "cuda"],
    ["bench", "train"],  # its default device is cuda
    ["bench", "inference", "--device", "cuda"],
    ["bench", "compare", "--device", "cuda"],
    ["train", "--task", "mano", "--policy", "fixed", "--preset", "smoke", "--out", "{tmp}/r", "--device", "cuda"],
]


def _run(argv: list[str], capsys) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse
        code = exc.code
    return code, capsys.readouterr().err


def _assert_one_line(code: int, err: str, fragment: str) -> None:
    assert code == 2, err
    assert err.endswith("\n") and err.count("\n") == 1, f"not one line:\n{err}"
    assert err.startswith("anira: error: "), err
    assert fragment in err, err


def _fill(argv: list[str], tmp: Path) -> list[str]:
    return [a.replace("{tmp}", str(tmp)) for a in argv]


@pytest.mark.parametrize("argv, fragment", CASES, ids=[" ".join(a) for a, _ in CASES])
def test_bad_input_is_one_line_and_exit_2(argv, fragment, tmp_path, capsys):
    before = sorted(tmp_path.rglob("*"))
    code, err = _run(_fill(argv, tmp_path), capsys)
    _assert_one_line(code, err, fragment)
    assert sorted(tmp_path.rglob("*")) == before  # nothing half-written


@pytest.mark.skipif(not NO_CUDA, reason="this machine has CUDA")
@pytest.mark.parametrize("argv", CUDA_CASES, ids=" ".join)
def test_cuda_without_cuda_is_one_line(argv, tmp_path, capsys):
    code, err = _run(_fill(argv, tmp_path), capsys)
    _assert_one_line(code, err, "CUDA is not available")
    assert list(tmp_path.iterdir()) == []


def _command_path(argv: list[str]) -> str:
    """`anira bench hooks` for ["bench", "hooks", "--repeats", "0"]."""
    current, words = build_parser(), ["anira"]
    for arg in argv:
        subs = [a for a in current._actions if isinstance(a, argparse._SubParsersAction)]
        if subs and arg in subs[0].choices:
            current = subs[0].choices[arg]
            words.append(arg)
    return " ".join(words)


def test_every_subcommand_has_a_bad_input_case():
    covered = {_command_path(argv) for argv, _ in CASES}
    every = {p.prog for p in _leaf_parsers(build_parser())}
    assert every - covered == set(), "subcommands without a bad-input case"


@pytest.mark.parametrize("argv, fragment", [
    (["tasks", "sample", "mano", "--split", "val"], "invalid choice: 'val'"),
    (["tasks", "sample", "nope"], "unknown task 'nope'"),
    (["--threads", "x", "eval", "ck"], "invalid int value"),
    (["eval"], "required: CKPT"),
    (["bench"], "needs a subcommand"),
])
def test_bad_input_in_a_real_process(argv, fragment):
    result = subprocess.run([sys.executable, "-m", "anira.cli", *argv], capture_output=True, text=True,
                            timeout=120)
    assert result.stdout == ""
    _assert_one_line(result.returncode, result.stderr, fragment)
